"""MODEL_CARD.md for a bundle, rendered from ``templates/MODEL_CARD.md.j2`` (jinja2).

The card starts with Hugging Face style YAML front matter (language, licence, tags, datasets, metrics with
their values, pipeline tag, base model), then the card proper. Everything in it comes from the bundle's own
files (``bundle.json``, ``policy.yaml``, ``metrics.json`` and, when attached, ``evaluation.json``), so
:func:`write_bundle_card` can render a bundle's card again at any time (``shenhe card``) and the result is
the same every time. The per-source and perturbation tables come from evaluation.json
(training/finetune/evaluation.py); the rebuild commands and the training time from metrics.json's record of
the run (training/finetune/rebuild.py).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from shenhe.models.bundle import (
    CARD_FILE,
    METRICS_FILE,
    BundleError,
    BundleManifest,
    DataSource,
    file_hashes,
    load_bundle,
    read_manifest,
    verify_files,
    write_manifest,
)
from shenhe.models.policy import Policy
from shenhe.training.finetune.evaluation import perturbation_table, read_evaluation, source_table
from shenhe.training.finetune.rebuild import REBUILD_KEY, describe_stages, describe_time, legacy_stages

TEMPLATE = "MODEL_CARD.md.j2"
# The licence of a model whose training data all allow commercial use: the project's own.
PROJECT_LICENCE = "apache-2.0"
NON_COMMERCIAL_LICENCE = "research-only-non-commercial-training-data"
TAGS = ("text-classification", "multi-label-classification", "content-moderation", "chinese", "onnx")
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def _worst_ap_drop(quality: dict[str, dict[str, float]]) -> float:
    return max((d for per in quality.values() for k, d in per.items() if k.startswith("ap_")), default=0.0)


def _plain(value: Any) -> str:
    """A hyperparameter value as a table cell."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def hub_id(base_encoder: str) -> str | None:
    """The Hugging Face id of the base model in a bundle's ``base_encoder`` ("me5-small-zh
    (intfloat/multilingual-e5-small, MIT)" or a bare hub id); None when it names none."""
    inner = re.search(r"\(([^,)]+)", base_encoder)
    for candidate in (inner.group(1).strip() if inner else None, base_encoder.strip()):
        if candidate and _HUB_ID.fullmatch(candidate):
            return candidate
    return None


def front_matter(manifest: BundleManifest, metrics: dict[str, Any], sources: Sequence[DataSource]) -> dict[str, Any]:
    """The card's YAML metadata, in the Hugging Face model card format."""
    non_commercial = [s.name for s in sources if s.commercial is False]
    meta: dict[str, Any] = {"language": ["zh"]}
    if non_commercial:  # the weights inherit the training data's terms
        meta.update(license="other", license_name=NON_COMMERCIAL_LICENCE, license_link=CARD_FILE)
    else:
        meta["license"] = PROJECT_LICENCE
    meta["tags"] = [*TAGS, *(["int8"] if "int8" in manifest.quantization.lower() else []),
                    *(["knowledge-distillation"] if (metrics.get("training") or {}).get("distillation") else [])]
    meta["datasets"] = [s.name for s in sources]
    meta["metrics"] = ["f1"]
    base = hub_id(manifest.base_encoder)
    if base:
        meta["base_model"] = base
    meta["pipeline_tag"] = "text-classification"
    results = []
    for split in ("dev", "test"):
        if split not in metrics:
            continue
        results.append({
            "task": {"type": "text-classification", "name": "Multi-label classification (Article 9 categories)"},
            "dataset": {"type": "shenhe-corpus", "split": split, "name": f"shenhe corpus, {split} split"
                        + (" (the thresholds were tuned on it)" if split == "dev" else "")},
            "metrics": [
                {"type": "f1", "name": "macro-F1 at dev-tuned thresholds", "value": metrics[split]["macro_f1"]},
                {"type": "f1", "name": "macro-F1 at the review thresholds", "value": metrics[split]["macro_f1_review"]},
            ],
        })
    if results:
        meta["model-index"] = [{"name": manifest.name, "results": results}]
    return meta


def _stages(manifest: BundleManifest, metrics: dict[str, Any]) -> list[dict[str, Any]]:
    recorded = (metrics.get(REBUILD_KEY) or {}).get("stages")
    return list(recorded) if recorded else legacy_stages(manifest.name, manifest.version, metrics)


def render_model_card(manifest: BundleManifest, policy: Policy, metrics: dict[str, Any],
                      sources: Sequence[DataSource], evaluation: dict[str, Any] | None = None) -> str:
    import jinja2
    import yaml

    text = resources.files("shenhe.training.finetune").joinpath("templates", TEMPLATE).read_text(encoding="utf-8")
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                             keep_trailing_newline=True)
    env.filters["pct"] = _pct
    env.filters["worst_ap_drop"] = _worst_ap_drop
    env.filters["plain"] = _plain
    env.filters["capitalize_first"] = lambda text: text[:1].upper() + text[1:]
    points = {p["slug"]: p for p in metrics.get("operating_points", [])}
    training = metrics.get("training", {})
    stages = _stages(manifest, metrics)
    # The training time is the latest trained stage's (a re-export trains nothing).
    timed = next((s for s in reversed(stages) if s.get("time")), None)
    reports = [{"report": r, "sources": source_table(r), "perturbations": perturbation_table(r)}
               for r in (evaluation or {}).get("reports", [])]
    return env.from_string(text).render(
        m=manifest, policy=policy, metrics=metrics, sources=sources, points=points,
        synthetic=[s for s in sources if s.synthetic],
        non_commercial=[s for s in sources if s.commercial is False],
        baseline=metrics.get("baseline"),
        hyperparameters=training.get("hyperparameters") or {},
        frameworks=metrics.get("frameworks") or {},
        reports=reports, block_gate=metrics.get("block_gate"), stages=describe_stages(stages),
        training_time=describe_time(timed["time"]) if timed else None,
        timed_stage=None if timed is None or timed is stages[-1] else timed.get("model"),
        front_matter=yaml.safe_dump(front_matter(manifest, metrics, sources), allow_unicode=True, sort_keys=False,
                                    width=1000),
    )


def render_bundle_card(bundle_dir: Path) -> str:
    """The card of the bundle in ``bundle_dir``, rendered from its own files (hashes not checked)."""
    bundle = load_bundle(bundle_dir, verify=False)
    metrics_path = bundle_dir / METRICS_FILE
    try:
        metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BundleError(f"{metrics_path}: unreadable ({e.__class__.__name__})") from None
    return render_model_card(bundle.manifest, bundle.policy, metrics, list(bundle.manifest.data_sources),
                             read_evaluation(bundle_dir, bundle.manifest))


def write_bundle_card(bundle_dir: Path, check: bool = False) -> bool:
    """Render the bundle's card again; write it (and its new hash into ``bundle.json``) unless ``check``.

    Every other file must match its hash first (the card is made from them). Returns whether the card on
    disk differed from the rendering."""
    manifest = read_manifest(bundle_dir)
    verify_files(bundle_dir, manifest.model_copy(update={"files": {k: v for k, v in manifest.files.items()
                                                                   if k != CARD_FILE}}))
    card = render_bundle_card(bundle_dir)
    path = bundle_dir / CARD_FILE
    try:
        current = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        current = None
    if check or current == card:
        return current != card
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(card, encoding="utf-8")
    os.replace(tmp, path)
    write_manifest(bundle_dir, manifest.model_copy(update={"files": {**manifest.files,
                                                                     **file_hashes(bundle_dir, (CARD_FILE,))}}))
    load_bundle(bundle_dir)  # every hash holds again
    return True
