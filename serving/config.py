"""Serving configuration: one typed object read from ``SHENHE_*`` environment variables.

`shenhe serve` turns its command-line options into these variables before it starts BentoML, so the
CLI, ``bentoml serve shenhe.serving.service:Shenhe`` and every worker process read the same settings.
:class:`ServingConfig` is the only reader of the environment in the service: everything else (the
runtime, the reloader, the hardening middleware, the predictor it builds) takes its settings from it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from shenhe.models.bundle import BUNDLE_ENV, DEFAULT_BUNDLE_DIR
from shenhe.models.cores import SPIN_ENV
from shenhe.models.policy import POLICY_ENV

# Hard limits of the API contract (not configurable: clients rely on them).
MAX_ITEMS = 256
MAX_ID_CHARS = 256
DEFAULT_DB_PATH = Path("var") / "shenhe.db"

ENV_PREFIX = "SHENHE_"
_ENV_FIELDS = {
    "bundle": BUNDLE_ENV,  # SHENHE_BUNDLE (named in models/, where offline commands read it too)
    "policy": POLICY_ENV,  # SHENHE_POLICY
    "db_url": "SHENHE_DB_URL",
    "keys_file": "SHENHE_KEYS_FILE",
    "max_text_chars": "SHENHE_MAX_TEXT_CHARS",
    "log_texts": "SHENHE_LOG_TEXTS",
    "host": "SHENHE_HOST",
    "port": "SHENHE_PORT",
    "workers": "SHENHE_WORKERS",
    "ort_threads": "SHENHE_ORT_THREADS",
    "ort_spinning": SPIN_ENV,  # SHENHE_ORT_SPINNING
    "batch_max_windows": "SHENHE_BATCH_MAX_WINDOWS",
    "batch_call_tokens": "SHENHE_BATCH_CALL_TOKENS",
    "batch_wait_ms": "SHENHE_BATCH_WAIT_MS",
    "queue_max_tokens": "SHENHE_QUEUE_MAX_TOKENS",
    "max_request_tokens": "SHENHE_MAX_REQUEST_TOKENS",
    "lease_seconds": "SHENHE_LEASE_SECONDS",
    "request_timeout_s": "SHENHE_REQUEST_TIMEOUT_S",
    "reload_interval_s": "SHENHE_RELOAD_INTERVAL_S",
    # review console (issue 18)
    "allowed_hosts": "SHENHE_ALLOWED_HOSTS",
    "second_opinion_share": "SHENHE_SECOND_OPINION_SHARE",
    "audit_block_share": "SHENHE_AUDIT_BLOCK_SHARE",
    "undo_seconds": "SHENHE_UNDO_SECONDS",
    "session_hours": "SHENHE_SESSION_HOURS",
    # active learning (issue 19)
    "review_order": "SHENHE_REVIEW_ORDER",
}

# Other names accepted for a variable (read only when the main name is unset): deployment templates often
# spell the database URL out in full.
_ENV_ALIASES = {"db_url": ("SHENHE_DATABASE_URL",)}

LOOPBACK_HOST_NAMES = ("localhost", "127.0.0.1", "::1")


class ConfigError(ValueError):
    """A setting that cannot be used; ``str(err)`` is a one-line reason naming the variable."""


def default_db_url(base: Path | None = None) -> str:
    """SQLite in ``var/shenhe.db`` under ``base`` (default: the current directory)."""
    path = ((base or Path.cwd()) / DEFAULT_DB_PATH).resolve()
    return f"sqlite:///{path}"


class ServingConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    bundle: Path | None = None  # None: the predictor's default ($SHENHE_BUNDLE, else models/default)
    policy: Path | None = None  # an operator policy replacing the bundle's policy.yaml
    db_url: str = Field(default_factory=default_db_url)
    keys_file: Path | None = None
    max_text_chars: int = Field(20_000, ge=1, le=1_000_000)
    log_texts: bool = False
    host: str | None = None  # None: 0.0.0.0 when API keys are configured, else 127.0.0.1
    port: int = Field(3000, ge=1, le=65535)
    workers: int = Field(1, ge=1, le=64)
    ort_threads: int | None = Field(None, ge=1, le=256)  # onnxruntime intra-op threads per worker
    # Idle onnxruntime threads spin (lowest latency on a dedicated machine); 0 lets them sleep (a shared one).
    ort_spinning: bool = True
    # Micro-batching across concurrent requests (serving/batcher.py): windows per batch, padded tokens per
    # model call (bounds how long one call holds the model), how long a batch waits for company, and how
    # many tokens may wait before requests are refused with 503.
    batch_max_windows: int = Field(32, ge=1, le=1024)
    batch_call_tokens: int = Field(2048, ge=64, le=65_536)
    batch_wait_ms: float = Field(2.0, ge=0, le=1000)
    queue_max_tokens: int = Field(65_536, ge=1024, le=10_000_000)
    # Model tokens one request may use (window overlaps counted). A 20,000-character text (the longest
    # allowed) needs ~23,000 and took 2.9 s with the default model on two cores, so this admits it and bounds
    # one request at about 4 s of model time.
    max_request_tokens: int = Field(32_768, ge=128, le=10_000_000)
    lease_seconds: int = Field(300, ge=1, le=86_400)
    # Our deadline for scoring a request (504 in our error format after it); BentoML's own timeout is set
    # a little longer so that ours always answers first.
    request_timeout_s: float = Field(30, gt=0, le=3600)
    # Hot reload (serving/reload.py): how often each worker checks its bundle and policy files for a
    # change (0: no watching; POST /v1/admin/reload and SIGHUP still reload).
    reload_interval_s: float = Field(2.0, ge=0, le=3600)
    # Review console and hardening (issue 18).
    # Host names the service answers to, comma-separated ("*" = any); None: loopback names only.
    allowed_hosts: str | None = None
    second_opinion_share: float = Field(0.05, ge=0.0, le=1.0)  # decided items re-queued for another reviewer
    audit_block_share: float = Field(0.02, ge=0.0, le=1.0)  # auto-blocked items queued as audit items
    undo_seconds: int = Field(60, ge=0, le=86_400)  # a reviewer may undo their decision this long
    session_hours: int = Field(12, ge=1, le=24 * 30)  # console sign-in lifetime
    # Which open item a claim gets when it does not say: the oldest ("age") or the one whose scores came
    # closest to a threshold ("uncertainty": active learning, the labels that teach the model most).
    review_order: Literal["age", "uncertainty"] = "age"

    @property
    def bundle_dir(self) -> Path:
        """The bundle to serve: ``bundle`` (``SHENHE_BUNDLE``), else the shipped ``models/default``."""
        return self.bundle if self.bundle is not None else DEFAULT_BUNDLE_DIR

    def host_names(self) -> frozenset[str] | None:
        """The allowed ``Host`` names (lower case, no port); None = any."""
        if self.allowed_hosts is None:
            return frozenset(LOOPBACK_HOST_NAMES)
        names = {n.strip().lower().strip("[]") for n in self.allowed_hosts.split(",") if n.strip()}
        return None if "*" in names else frozenset(names)

    @field_validator("db_url")
    @classmethod
    def _url_has_scheme(cls, v: str) -> str:
        if "://" not in v:
            raise ValueError("expected an SQLAlchemy URL such as sqlite:///var/shenhe.db or postgresql+psycopg://user@host/db")
        return v

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: object) -> ServingConfig:
        """Read ``SHENHE_*`` variables (empty values count as unset); ``overrides`` win."""
        env = os.environ if env is None else env
        data: dict[str, object] = {}
        read_from: dict[str, str] = {}  # field -> the variable its value came from (for error messages)
        for field, var in _ENV_FIELDS.items():
            value = env.get(var, "").strip()
            read_from[field] = var
            for alias in _ENV_ALIASES.get(field, ()):
                other = env.get(alias, "").strip()
                if value and other and other != value:
                    raise ConfigError(f"{var} and {alias} are both set and differ: set one of them")
                if other and not value:
                    value, read_from[field] = other, alias
            if value:
                data[field] = value
        data.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            first = e.errors()[0]
            field = str(first["loc"][0]) if first["loc"] else "config"
            where = read_from.get(field, field)
            msg = first["msg"].removeprefix("Value error, ")
            raise ConfigError(f"{where}: {msg} (got {data.get(field)!r})") from None

    def to_env(self) -> dict[str, str]:
        """The variables that reproduce this config in another process."""
        out: dict[str, str] = {}
        for field, var in _ENV_FIELDS.items():
            value = getattr(self, field)
            if value is None:
                continue
            if isinstance(value, bool):
                out[var] = "1" if value else "0"
            elif isinstance(value, Path):
                out[var] = str(value.resolve())
            else:
                out[var] = str(value)
        return out


def bentoml_timeout(config: ServingConfig) -> int:
    """BentoML's request timeout: a margin above ours, so that our 504 (in our error format) answers first."""
    return int(config.request_timeout_s) + 10
