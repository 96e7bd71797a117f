"""Load the base encoder that fine-tuning starts from: a local directory or a Hugging Face hub id.

Usage (the fine-tuning code's single entry point)::

    from shenhe.training.encoder.base import load_base
    base = load_base("~/.cache/shenhe/encoders/me5-small-zh")   # or "hfl/rbt3", "bert-base-chinese"
    batch = base.tokenizer([base.text_prefix + t for t in texts], padding=True, truncation=True,
                           max_length=base.max_length, return_tensors="pt")
    hidden = base.model(**batch).last_hidden_state
    sentence = mean_pool(hidden, batch["attention_mask"])        # or hidden[:, 0] when base.pooling == "cls"

* ``base`` may be any BERT-family checkpoint ``AutoModel`` can load (BERT, RoBERTa-wwm, XLM-R, ...).
* A directory written by ``shenhe encoder import`` carries ``shenhe_encoder.json``, which sets
  ``text_prefix="passage: "`` and ``pooling="mean"`` (how e5 was trained); other checkpoints get
  ``text_prefix=""`` and ``pooling="mean"`` unless told otherwise.
* Without network (no hub), a hub id works only if it is already in the local Hugging Face cache;
  otherwise :class:`BaseEncoderError` says so in one line.

Heavy imports (torch, transformers) happen inside the functions.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    import torch

T = TypeVar("T")

ENCODER_META_FILE = "shenhe_encoder.json"
DEFAULT_ENCODER_NAME = "me5-small-zh"


class BaseEncoderError(Exception):
    """The base encoder cannot be loaded; ``str(err)`` is a one-line reason."""


def shenhe_cache_dir() -> Path:
    """``$SHENHE_CACHE`` or ``~/.cache/shenhe`` (outside the repository, so never committed)."""
    return Path(os.environ.get("SHENHE_CACHE", "~/.cache/shenhe")).expanduser()


def default_encoder_dir() -> Path:
    """Where ``shenhe encoder import`` writes by default and what ``--base`` defaults to."""
    return shenhe_cache_dir() / "encoders" / DEFAULT_ENCODER_NAME


@dataclass(frozen=True)
class EncoderMeta:
    """How to feed and pool a base encoder."""

    text_prefix: str = ""
    pooling: str = "mean"  # "mean" (mask-aware average over tokens) or "cls"
    max_length: int = 512

    @staticmethod
    def read(directory: Path) -> EncoderMeta | None:
        path = directory / ENCODER_META_FILE
        if not path.is_file():
            return None
        data = json.loads(path.read_text(encoding="utf-8"))
        return EncoderMeta(text_prefix=data.get("text_prefix", ""), pooling=data.get("pooling", "mean"),
                           max_length=int(data.get("max_length", 512)))


@dataclass
class BaseEncoder:
    tokenizer: Any  # transformers PreTrainedTokenizerBase (fast)
    model: Any  # transformers PreTrainedModel (AutoModel, no task head)
    source: str  # resolved local directory or hub id
    text_prefix: str
    pooling: str
    max_length: int

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)


def _looks_like_path(base: str) -> bool:
    return base.startswith(("/", "./", "../", "~")) or base.endswith("/")


def resolve_base(base: str) -> tuple[str, Path | None]:
    """-> (what to pass to ``from_pretrained``, local directory or None for a hub id)."""
    if not base or not base.strip():
        raise BaseEncoderError("--base is empty; pass a local checkpoint directory or a hub id")
    path = Path(base).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise BaseEncoderError(f"{path} has no config.json; it is not a transformers checkpoint directory")
        return str(path), path
    if path.exists() or _looks_like_path(base) or base.count("/") > 1:
        hint = " (run `shenhe encoder import` first)" if path == default_encoder_dir() else ""
        raise BaseEncoderError(f"base encoder directory {path} does not exist{hint}")
    return base, None


def _hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co")


def _hub_reachable(timeout_s: float = 3.0) -> bool:
    """One quick TCP connect instead of huggingface_hub's five retries with back-off (~80 s offline)."""
    import socket
    from urllib.parse import urlparse

    url = urlparse(_hub_endpoint())
    try:
        with socket.create_connection((url.hostname or "huggingface.co", url.port or 443), timeout=timeout_s):
            return True
    except OSError:
        return False


def load_base_config(base: str) -> Any:  # transformers PretrainedConfig
    """``AutoConfig`` of a local directory or hub id (cache first, then the hub if reachable)."""
    from transformers import AutoConfig

    ref, local = resolve_base(base)
    return _from_hub_or_cache(AutoConfig.from_pretrained, ref, local)


def _from_hub_or_cache(loader: Callable[..., T], ref: str, local: Path | None, **kwargs: Any) -> T:
    if local is not None:
        return loader(ref, **kwargs)
    try:
        return loader(ref, local_files_only=True, **kwargs)
    except (OSError, ValueError):
        pass
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        raise BaseEncoderError(
            f"base encoder {ref!r} is not a local directory and is not in the Hugging Face cache (HF_HUB_OFFLINE is set); "
            "pass a local directory, e.g. the output of `shenhe encoder import`"
        )
    if not _hub_reachable():
        raise BaseEncoderError(
            f"base encoder {ref!r} is not a local directory, not in the Hugging Face cache, and the hub "
            f"({_hub_endpoint()}) is unreachable; pass a local directory, e.g. the output of `shenhe encoder import`"
        )
    try:
        return loader(ref, **kwargs)
    except Exception as e:  # network errors come in many types (OSError, requests/httpx errors, ...)
        raise BaseEncoderError(
            f"cannot fetch base encoder {ref!r} from the Hugging Face hub ({type(e).__name__}; no network?) and it is "
            "not a local directory; pass a local directory, e.g. the output of `shenhe encoder import`"
        ) from None


def load_base(base: str, *, with_model: bool = True) -> BaseEncoder:
    """Load tokenizer (+ ``AutoModel`` unless ``with_model=False``) for fine-tuning.

    ``base``: a local checkpoint directory (``~`` expanded) or a hub id such as ``hfl/rbt3``.
    Raises :class:`BaseEncoderError` (one-line message) when it cannot be loaded."""
    from transformers import AutoModel, AutoTokenizer

    ref, local = resolve_base(base)
    meta = (EncoderMeta.read(local) if local else None) or EncoderMeta()
    try:
        tokenizer = _from_hub_or_cache(AutoTokenizer.from_pretrained, ref, local)
    except BaseEncoderError:
        raise
    except Exception as e:
        raise BaseEncoderError(f"cannot load a tokenizer from {ref}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    if not getattr(tokenizer, "is_fast", False):
        raise BaseEncoderError(f"{ref} has no fast tokenizer (tokenizer.json); shenhe needs one for serving")
    model = None
    if with_model:
        try:
            model = _from_hub_or_cache(AutoModel.from_pretrained, ref, local)
        except BaseEncoderError:
            raise
        except Exception as e:
            raise BaseEncoderError(f"cannot load a model from {ref}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    max_positions = None
    if model is not None:
        max_positions = getattr(model.config, "max_position_embeddings", None)
    max_length = min(x for x in (meta.max_length, max_positions, getattr(tokenizer, "model_max_length", None) or 10**9)
                     if x)
    return BaseEncoder(tokenizer, model, ref, meta.text_prefix, meta.pooling, int(max_length))


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mask-aware mean over the token axis: ``hidden`` [B, T, H], ``attention_mask`` [B, T] -> [B, H]."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)


def pool(base: BaseEncoder, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Sentence vector the way ``base`` expects (``mean`` or ``cls``)."""
    if base.pooling == "cls":
        return hidden[:, 0]
    return mean_pool(hidden, attention_mask)
