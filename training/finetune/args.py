"""Typed configuration of `shenhe train` (:class:`TrainingArguments`, saved into the run directory as run.json)
and `shenhe export` (:class:`ExportOptions`). The defaults live here only: the CLI options fall through to them."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Self

from shenhe.models.windowing import DEFAULT_MAX_LENGTH, DEFAULT_STRIDE

AUGMENT_KINDS = ("homophone", "lookalike", "insert", "traditional")


def _default_augment_weights() -> dict[str, float]:
    return {"homophone": 0.4, "lookalike": 0.3, "insert": 0.2, "traditional": 0.1}


CALIBRATIONS = ("platt", "isotonic")

@dataclass
class AugmentConfig:
    """Obfuscation augmentation (training/finetune/augment.py): each epoch, a share of training texts is
    rewritten the way users disguise text. Which rows are rewritten depends only on (seed, epoch, row),
    never on the label, so harmless texts are disguised as often as harmful ones; labels are unchanged."""

    share: float = 0.0  # share of training rows rewritten per epoch (0: off)
    weights: dict[str, float] = field(default_factory=_default_augment_weights)  # relative weight per kind
    seed: int | None = None  # None: the run's seed
    homophone_rate: float = 0.2  # homophone: share of a text's Chinese characters replaced (at least one)
    homophone_candidates: int = 3  # homophone: the N most frequent same-sound characters are candidates
    lookalike_rate: float = 0.6  # lookalike: chance of replacing each table word found (at least one)
    space_share: float = 0.35  # insert: share of rewrites that insert spaces (else one symbol per text)
    second_kind_share: float = 0.2  # share of rewrites that combine two kinds (e.g. homophones + symbols)

    def __post_init__(self) -> None:
        if not 0.0 <= self.share <= 1.0:
            raise ValueError("augment share must be in [0, 1]")
        unknown = sorted(set(self.weights) - set(AUGMENT_KINDS))
        if unknown:
            raise ValueError(f"unknown augmentation kind(s) {unknown}; known: {', '.join(AUGMENT_KINDS)}")
        if any(w < 0 for w in self.weights.values()):
            raise ValueError("augmentation weights must be >= 0")
        if self.share > 0 and not any(w > 0 for w in self.weights.values()):
            raise ValueError("augmentation is on (share > 0) but every kind has weight 0")
        for name in ("homophone_rate", "lookalike_rate"):
            if not 0.0 < getattr(self, name) <= 1.0:
                raise ValueError(f"augment {name} must be in (0, 1]")
        for name in ("space_share", "second_kind_share"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"augment {name} must be in [0, 1]")
        if self.homophone_candidates < 1:
            raise ValueError("augment homophone_candidates must be >= 1")

    @property
    def enabled(self) -> bool:
        return self.share > 0


@dataclass
class SamplingConfig:
    """How often each training row is drawn per epoch (training/finetune/dataset.py: sampling_weights).

    Every row keeps an expected number of copies per epoch (1 when everything is off). Source shares
    balance sources without throwing rows away: a source's rows together get its share of the epoch, each
    row drawn with probability share * rows / source_rows (a down-weighted source shows a different part of
    itself every epoch; an up-weighted one repeats rows). ``TrainingArguments.oversample_rare`` then raises
    the rows of rare categories, on the same weights."""

    source_power: float | None = None  # share of source s proportional to rows_s ** power (1: natural, 0: equal; None: off)
    source_shares: dict[str, float] = field(default_factory=dict)  # fixed shares of named sources (the rest by power)
    harmless_boost: dict[str, float] = field(default_factory=dict)  # weight of a source's harmless rows vs its harmful
    # ones, within the source's share (e.g. {"COLD": 1.5}: COLD's non-offensive comments weigh more)

    def __post_init__(self) -> None:
        if self.source_power is not None and not 0.0 <= self.source_power <= 1.0:
            raise ValueError("source_power must be in [0, 1]")
        if any(v < 0 for v in self.source_shares.values()) or sum(self.source_shares.values()) > 1.0 + 1e-9:
            raise ValueError("source shares must be >= 0 and sum to at most 1")
        if any(v <= 0 for v in self.harmless_boost.values()):
            raise ValueError("harmless_boost factors must be > 0")

    @property
    def enabled(self) -> bool:
        return self.source_power is not None or bool(self.source_shares) or bool(self.harmless_boost)


@dataclass
class TrainingArguments:
    """Everything that defines a fine-tuning run. Defaults are sized for a 2-core CPU."""

    base: str  # hub id or local directory of the encoder (AutoModel / AutoTokenizer)
    data: Path  # folder with train.jsonl, dev.jsonl[, test.jsonl]
    out: Path  # run directory
    init_from: str | None = None  # warm start: a run, model folder or bundle fine-tuned from `base` (see warm_start.py)
    # Optimisation
    epochs: int = 3
    learning_rate: float = 5e-5  # encoder
    head_learning_rate: float = 5e-4  # the freshly initialised classification head learns faster
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    batch_size: int = 32
    eval_batch_size: int = 64
    grad_clip: float = 1.0
    seed: int = 42
    dropout: float = 0.1
    pooling: Literal["mean", "cls"] = "mean"  # e5 encoders are trained with mean pooling
    # Positive weight per category = clip((neg/pos) ** power, 1, max): rare categories count more.
    pos_weight_power: float = 0.5
    pos_weight_max: float = 30.0
    # Sequence handling
    max_length: int = DEFAULT_MAX_LENGTH
    window_stride: int = DEFAULT_STRIDE
    # Speed on CPU
    freeze_embeddings: bool | None = None  # None: frozen on CPU, trained on GPU
    freeze_layers: int = 0  # freeze the bottom N transformer layers
    threads: int | None = None  # torch threads; None: the cores this process may use
    device: str = "auto"  # auto | cpu | cuda
    max_train_samples: int | None = None  # deterministic subsample (keeps rare-category positives)
    max_per_source: int | None = None  # cap rows per data source (same rule; prefer `sampling`, which drops nothing)
    rare_category_rows: int = 5000  # categories with fewer train positives keep all of them in a subsample
    min_train_positives: int = 20  # fewer train positives: the category is untrained (masked)
    # Rows of categories expected fewer than N times per epoch (after `sampling`) are drawn
    # ceil(N / expected) times as often, at most 8x (0: off). Without source weights: repeat their positives.
    oversample_rare: int = 0
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    max_steps: int | None = None
    time_budget_minutes: float | None = None  # total training time over all resumes; then stop cleanly
    # Evaluation, checkpoints, early stopping
    eval_every_steps: int | None = 300  # plus one evaluation at each epoch end
    eval_samples: int | None = 2000  # dev subsample used during training (full dev at the end)
    early_stopping_patience: int = 3  # evaluations without macro-F1 improvement
    # Weight averaging: the trainable weights every N steps go to snapshots/; at the end the last K snapshots
    # (the final weights among them) are averaged, and the average replaces the best checkpoint when it scores
    # at least as well on the dev subsample. Averages of late weights generalise better than any one of them.
    snapshot_every_steps: int | None = None
    average_last: int = 0  # K (0: off; needs snapshot_every_steps)
    save_every_steps: int = 100
    log_every_steps: int = 10
    calibration: Literal["platt", "isotonic"] = "platt"  # one of CALIBRATIONS
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.data = Path(self.data)
        self.out = Path(self.out)
        if self.epochs < 1:
            raise ValueError("epochs must be >= 1")
        if self.batch_size < 1 or self.eval_batch_size < 1:
            raise ValueError("batch sizes must be >= 1")
        if not 0 <= self.window_stride < self.max_length - 2:
            raise ValueError("window_stride must be in [0, max_length - 2)")
        if self.freeze_layers < 0:
            raise ValueError("freeze_layers must be >= 0")
        if self.average_last < 0 or self.average_last == 1:
            raise ValueError("average_last must be 0 (off) or at least 2")
        if self.average_last and not self.snapshot_every_steps:
            raise ValueError("average_last needs snapshot_every_steps (weights to average)")
        if self.snapshot_every_steps is not None and self.snapshot_every_steps < 1:
            raise ValueError("snapshot_every_steps must be >= 1")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ValueError("warmup_ratio must be in [0, 1)")
        if self.oversample_rare < 0:
            raise ValueError("oversample_rare must be >= 0")
        if self.calibration not in CALIBRATIONS:
            raise ValueError(f"calibration must be platt or isotonic, not {self.calibration!r}")
        if isinstance(self.sampling, dict):  # from run.json
            self.sampling = SamplingConfig(**self.sampling)
        if isinstance(self.augment, dict):
            self.augment = AugmentConfig(**self.augment)
        self.sampling.__post_init__()  # fields may have been changed after construction
        self.augment.__post_init__()

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["data"] = str(self.data)
        d["out"] = str(self.out)
        return d

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Self:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_json(), ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


LAYER_MAPS = ("spread", "bottom")  # shenhe distill --layer-map, besides an explicit list of layers


def parse_layer_map(layer_map: str) -> list[int] | None:
    """None for ``spread``/``bottom``; the teacher layer indices of an explicit list ("0,4,8,11")."""
    if layer_map in LAYER_MAPS:
        return None
    try:
        picked = [int(x) for x in layer_map.replace(" ", "").split(",") if x != ""]
    except ValueError:
        picked = []
    if not picked or any(i < 0 for i in picked) or picked != sorted(set(picked)):
        raise ValueError(f"--layer-map must be spread, bottom or increasing layer indices like 0,4,8,11; "
                         f"got {layer_map!r}")
    return picked


@dataclass
class DistillArguments(TrainingArguments):
    """A ``shenhe train`` run's arguments plus the teacher and how to learn from it (saved in run.json)."""

    teacher: str = ""  # a bundle or a finished `shenhe train` run
    layers: int = 0  # K: encoder layers the student keeps (0: as many as an explicit layer_map lists)
    layer_map: str = "spread"  # spread | bottom | an explicit list of teacher layers, e.g. "0,4,8,11"
    alpha: float = 0.7  # weight of the teacher's soft scores; 1 - alpha on the gold labels
    temperature: float = 2.0
    unlabelled: list[str] = field(default_factory=list)  # files of texts without labels (JSONL "text" or lines)
    augment_copies: int = 0  # fixed obfuscated copies of each training text (augment.py, the `augment` settings)
    teacher_cache: str | None = None  # where the teacher's logits are cached (None: RUN/teacher)
    # The student starts from trained weights (head included): one learning rate for all of it.
    learning_rate: float = 1e-4
    head_learning_rate: float = 1e-4
    min_train_positives: int = 1  # the student's trained categories are the teacher's, whatever the counts

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.teacher:
            raise ValueError("a teacher is needed (--teacher BUNDLE_OR_RUN)")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError("alpha must be in [0, 1]")
        if self.temperature <= 0:
            raise ValueError("temperature must be > 0")
        if self.augment_copies < 0:
            raise ValueError("augment_copies must be >= 0")
        explicit = parse_layer_map(self.layer_map)
        if explicit is not None:
            if self.layers and self.layers != len(explicit):
                raise ValueError(f"--layers {self.layers} but --layer-map {self.layer_map!r} lists {len(explicit)} layers")
            self.layers = len(explicit)
        if self.layers < 1:
            raise ValueError("--layers K must be >= 1")
        self.unlabelled = [str(p) for p in self.unlabelled]


@dataclass
class ExportOptions:
    """Everything that defines an export (``shenhe export``); see training/finetune/export.py."""

    run: Path  # a finished run directory, or a bundle to re-export
    out: Path
    name: str | None = None  # default: the out folder's name
    version: str | None = None  # default: today's date
    data: Path | None = None  # default: the run's --data
    policy: Path | None = None  # base policy (targets, word lists); default: the shipped policy
    baseline: Path | None = None  # a `shenhe train --arch tfidf` run to compare with in the card
    calibration: str | None = None  # platt | isotonic; default: the run's choice
    threads: int | None = None
    batch_size: int = 64
    allow_parity_failure: bool = False
    show_progress: bool = True
    quantization: str = "auto"  # auto (the fastest scheme whose quality holds) or one of QUANT_SCHEMES

    def __post_init__(self) -> None:
        if self.calibration is not None and self.calibration not in CALIBRATIONS:
            raise ValueError(f"calibration must be platt or isotonic, not {self.calibration!r}")
    base: str | None = None  # the encoder a bundle was trained from (needed to re-export a bundle)


# ---- command-line options fall through to these defaults --------------------------------------------

# `shenhe train` / `shenhe distill` option -> the field it sets (the option's parameter in training/finetune/cli.py
# is its name with "_" for "-"). training/finetune/rebuild.py writes a run's arguments back as these options.
RUN_OPTIONS: dict[str, str] = {
    "--epochs": "epochs", "--lr": "learning_rate", "--head-lr": "head_learning_rate", "--batch-size": "batch_size",
    "--max-length": "max_length", "--stride": "window_stride", "--warmup-ratio": "warmup_ratio", "--seed": "seed",
    "--freeze-embeddings": "freeze_embeddings", "--freeze-layers": "freeze_layers", "--max-steps": "max_steps",
    "--time-budget-minutes": "time_budget_minutes", "--max-train-samples": "max_train_samples",
    "--max-per-source": "max_per_source", "--eval-every-steps": "eval_every_steps", "--eval-samples": "eval_samples",
    "--save-every-steps": "save_every_steps", "--patience": "early_stopping_patience",
    "--snapshot-every-steps": "snapshot_every_steps", "--average-last": "average_last", "--threads": "threads",
    "--device": "device", "--calibration": "calibration", "--min-train-positives": "min_train_positives",
    "--oversample-rare": "oversample_rare",
    "--layers": "layers", "--layer-map": "layer_map", "--alpha": "alpha", "--temperature": "temperature",
    "--augment-copies": "augment_copies",
}
TRAIN_ONLY_OPTIONS = ("--freeze-layers", "--min-train-positives", "--oversample-rare")
DISTILL_ONLY_OPTIONS = ("--layers", "--layer-map", "--alpha", "--temperature", "--augment-copies")
ZERO_MEANS_OFF = ("eval_every_steps", "eval_samples")  # 0 on the command line: None in the dataclass


def default_help(cls: type[Any], name: str) -> str:
    """``[default: X]`` for an option's help text, X being the dataclass field's default (set only there)."""
    value = next(f.default for f in dataclasses.fields(cls) if f.name == name)
    return f"\\[default: {'none' if value is None else value}]"


def given(**options: Any) -> dict[str, Any]:
    """The options given on the command line; one left out (None) falls through to the dataclass default."""
    return {name: value for name, value in options.items() if value is not None}
