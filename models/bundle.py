"""The model bundle: one directory with everything the predictor needs, verified on load.

Files: ``model.onnx`` (INT8; inputs ``input_ids``/``attention_mask`` int64 [batch, seq], output ``logits``
float32 [batch, 9]), ``tokenizer.json``, ``bundle.json`` (this manifest), ``policy.yaml``, ``metrics.json``
and ``MODEL_CARD.md``; optionally ``ngram.npz``, a character n-gram model blended with the encoder (the
manifest's ``ngram`` section, see ``models/ngram.py``; a bundle without the section scores with the encoder
alone), and ``evaluation.json`` (summaries of `shenhe eval` reports on this bundle, shown in the card).
``bundle.json`` lists the sha256 of every other file; a mismatch (a corrupted or
swapped model) refuses to load.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from shenhe.models.policy import CATEGORY_SLUGS, Policy, PolicyError, parse_policy

DEFAULT_BUNDLE_DIR = Path(__file__).resolve().with_name("default")
BUNDLE_ENV = "SHENHE_BUNDLE"
MANIFEST_FILE = "bundle.json"
MODEL_FILE = "model.onnx"
TOKENIZER_FILE = "tokenizer.json"
POLICY_FILE = "policy.yaml"
METRICS_FILE = "metrics.json"
CARD_FILE = "MODEL_CARD.md"
EVALUATION_FILE = "evaluation.json"  # optional: evaluation reports attached with `shenhe card --eval`
REQUIRED_FILES = (MODEL_FILE, TOKENIZER_FILE, POLICY_FILE)
FORMAT_VERSION = 1


class BundleError(ValueError):
    """A bundle that cannot be used. ``str(err)`` is a one-line, user-facing reason."""


class CategoryCalibration(BaseModel):
    """Maps a category's raw logit to a calibrated probability.

    ``platt``: ``sigmoid(logit / temperature + bias)``. ``isotonic``: piecewise-linear through
    (``x`` = raw logit, ``y`` = probability) points, flat beyond the ends."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: Literal["platt", "isotonic"] = "platt"
    temperature: float = Field(1.0, gt=0.0)
    bias: float = 0.0
    x: tuple[float, ...] = ()
    y: tuple[float, ...] = ()

    @model_validator(mode="after")
    def _isotonic_points(self) -> CategoryCalibration:
        if self.method == "isotonic":
            if len(self.x) < 2 or len(self.x) != len(self.y):
                raise ValueError("isotonic calibration needs >= 2 points with as many x as y")
            if any(b < a for a, b in zip(self.x, self.x[1:], strict=False)):
                raise ValueError("isotonic x points must be increasing")
        return self

    def apply(self, logits: np.ndarray) -> np.ndarray:
        logits = np.asarray(logits, dtype=np.float64)
        if self.method == "isotonic":
            return np.interp(logits, self.x, self.y)
        z = logits / self.temperature + self.bias
        return 1.0 / (1.0 + np.exp(-np.clip(z, -60.0, 60.0)))


class CategoryBlend(BaseModel):
    """One category's ensemble logit: ``encoder * encoder_logit + ngram * ngram_logit + bias`` (then the
    category's calibration). ``encoder`` > 0 so that blending each window and taking the maximum over
    windows equals blending the text's maximum, which is what the weights were fit on."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    encoder: float = Field(gt=0.0)
    ngram: float
    bias: float = 0.0


class NgramEnsemble(BaseModel):
    """``bundle.json`` ``ngram``: the n-gram component file and, per blended category, its weights.
    Trained categories not in ``blend`` score with the encoder alone."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    file: str = "ngram.npz"
    blend: dict[str, CategoryBlend]
    source: str = ""  # the TF-IDF run it was converted from
    features: int = Field(0, ge=0)
    fit: dict[str, Any] = {}  # what the weights were fit on (split, texts, method)

    @field_validator("file")
    @classmethod
    def _plain_name(cls, v: str) -> str:
        if not v or v != Path(v).name or v in (".", ".."):
            raise ValueError(f"must be a file name inside the bundle, not {v!r}")
        return v


class DataSource(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    title: str = ""
    licence: str = "unknown"
    commercial: bool | None = None  # does the licence allow use in a commercial service? None: unknown
    url: str = ""
    rows: dict[str, int] = {}  # split -> rows used
    synthetic: bool = False
    note: str = ""


class BundleManifest(BaseModel):
    """``bundle.json``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format_version: int = FORMAT_VERSION
    name: str = Field(min_length=1)
    version: str = Field(min_length=1)
    created: str
    base_encoder: str
    max_length: int = Field(gt=2)
    window_stride: int = Field(ge=0)
    pad_token_id: int = Field(ge=0)
    text_prefix: str = ""  # put before every window's text (e5 encoders: "passage: ")
    slugs: tuple[str, ...]
    trained_categories: tuple[str, ...]
    calibration: dict[str, CategoryCalibration]
    data_sources: tuple[DataSource, ...] = ()
    files: dict[str, str]  # file name -> sha256 hex
    metrics: dict[str, Any] = {}  # summary; the full numbers are in metrics.json
    quantization: str = "int8 dynamic (per-channel weights, per-tensor activations)"
    ngram: NgramEnsemble | None = None  # absent: the encoder alone

    @field_validator("slugs")
    @classmethod
    def _article9_order(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if tuple(v) != CATEGORY_SLUGS:
            unknown = [s for s in v if s not in CATEGORY_SLUGS]
            if unknown:
                raise ValueError(f"unknown category {unknown[0]!r}")
            raise ValueError(f"must list the nine Article 9 categories in order: {', '.join(CATEGORY_SLUGS)}")
        return v

    @model_validator(mode="after")
    def _known_categories(self) -> BundleManifest:
        for slug in (*self.trained_categories, *self.calibration):
            if slug not in CATEGORY_SLUGS:
                raise ValueError(f"unknown category {slug!r}")
        missing = [s for s in self.trained_categories if s not in self.calibration]
        if missing:
            raise ValueError(f"no calibration for trained category {missing[0]!r}")
        if self.window_stride >= self.max_length - 2:
            raise ValueError(f"window_stride {self.window_stride} must be below max_length - 2")
        if self.ngram is not None:
            if self.ngram.file not in self.files:
                raise ValueError(f"ngram: {self.ngram.file} has no hash in files")
            untrained = [s for s in self.ngram.blend if s not in self.trained_categories]
            if untrained:
                raise ValueError(f"ngram: blend for {untrained[0]!r}, which the bundle does not score")
        return self

    @property
    def trained_mask(self) -> np.ndarray:
        return np.array([s in self.trained_categories for s in CATEGORY_SLUGS], dtype=bool)


@dataclass(frozen=True)
class Bundle:
    dir: Path
    manifest: BundleManifest
    policy: Policy

    @property
    def model_path(self) -> Path:
        return self.dir / MODEL_FILE

    @property
    def tokenizer_path(self) -> Path:
        return self.dir / TOKENIZER_FILE

    @property
    def ngram_path(self) -> Path | None:
        """The n-gram component blended with the encoder, if the bundle has one."""
        return None if self.manifest.ngram is None else self.dir / self.manifest.ngram.file

    def metrics(self) -> dict[str, Any]:
        p = self.dir / METRICS_FILE
        return json.loads(p.read_text(encoding="utf-8")) if p.is_file() else {}


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def resolve_bundle_dir(path: str | os.PathLike[str] | None = None) -> Path:
    """``path``, else ``$SHENHE_BUNDLE``, else the shipped ``models/default``."""
    return Path(path or os.environ.get(BUNDLE_ENV) or DEFAULT_BUNDLE_DIR)


def read_manifest(bundle_dir: Path) -> BundleManifest:
    mpath = bundle_dir / MANIFEST_FILE
    hint = (" (export one with `shenhe export`, or point --bundle / $SHENHE_BUNDLE at a bundle)"
            if bundle_dir.resolve() == DEFAULT_BUNDLE_DIR else "")
    if not bundle_dir.is_dir():
        raise BundleError(f"{bundle_dir}: bundle directory not found{hint}")
    if not mpath.is_file():
        raise BundleError(f"{bundle_dir}: not a shenhe bundle ({MANIFEST_FILE} missing){hint}")
    try:
        data = json.loads(mpath.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BundleError(f"{mpath}: unreadable ({e.__class__.__name__})") from None
    try:
        return BundleManifest.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "bundle"
        raise BundleError(f"{mpath}: {where}: {first['msg'].removeprefix('Value error, ')}") from None


def verify_files(bundle_dir: Path, manifest: BundleManifest) -> None:
    for name in REQUIRED_FILES:
        if name not in manifest.files:
            raise BundleError(f"{bundle_dir}: {MANIFEST_FILE} lists no hash for {name}")
    for name, digest in manifest.files.items():
        p = bundle_dir / name
        if not p.is_file():
            raise BundleError(f"{bundle_dir}: {name} missing")
        if sha256_file(p) != digest:
            raise BundleError(f"{bundle_dir}: {name} does not match its hash in {MANIFEST_FILE} (corrupted or replaced)")


def check_policy_fits(policy: Policy, manifest: BundleManifest, source: str) -> None:
    """An operator policy must name exactly the bundle's categories."""
    if policy.slugs != manifest.slugs:
        unknown = [s for s in policy.slugs if s not in manifest.slugs]
        what = f"category {unknown[0]!r} unknown to the bundle" if unknown else "categories differ from the bundle's"
        raise BundleError(f"{source}: {what}")


def load_bundle(path: str | os.PathLike[str] | None = None, verify: bool = True) -> Bundle:
    """Load and verify a bundle directory (see :func:`resolve_bundle_dir` for the default)."""
    bundle_dir = resolve_bundle_dir(path)
    manifest = read_manifest(bundle_dir)
    if verify:
        verify_files(bundle_dir, manifest)
    ppath = bundle_dir / POLICY_FILE
    try:
        policy = parse_policy(ppath.read_text(encoding="utf-8"), source=str(ppath))
    except PolicyError as e:
        raise BundleError(str(e)) from None
    except (OSError, UnicodeDecodeError) as e:
        raise BundleError(f"{ppath}: unreadable ({e.__class__.__name__})") from None
    check_policy_fits(policy, manifest, str(ppath))
    return Bundle(bundle_dir, manifest, policy)


def write_manifest(bundle_dir: Path, manifest: BundleManifest) -> None:
    (bundle_dir / MANIFEST_FILE).write_text(
        json.dumps(manifest.model_dump(mode="json"), ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


def file_hashes(bundle_dir: Path, names: tuple[str, ...]) -> dict[str, str]:
    return {name: sha256_file(bundle_dir / name) for name in names if (bundle_dir / name).is_file()}
