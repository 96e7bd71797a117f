"""A transformers encoder with a 9-way multi-label head, plus saving and loading it in a run directory.

Layout of ``runs/NAME/model/``: ``encoder/`` (``save_pretrained`` of the encoder and its tokenizer),
``head.safetensors`` and ``classifier.json`` (pooling, labels). Checkpoints for ``--resume`` hold only
the parameters that train (see trainer.py), so frozen embeddings are never rewritten.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from shenhe.models.policy import CATEGORY_SLUGS

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from shenhe.training.encoder.base import BaseEncoder

CLASSIFIER_FILE = "classifier.json"
HEAD_FILE = "head.safetensors"
ENCODER_DIR = "encoder"


class MultiLabelClassifier(nn.Module):
    """encoder -> pooled vector -> dropout -> linear(9) logits (one sigmoid per category)."""

    def __init__(self, encoder: PreTrainedModel, num_labels: int = len(CATEGORY_SLUGS), dropout: float = 0.1,
                 pooling: str = "mean") -> None:
        super().__init__()
        if pooling not in ("mean", "cls"):
            raise ValueError(f"pooling must be 'mean' or 'cls', not {pooling!r}")
        self.encoder = encoder
        self.pooling = pooling
        hidden = int(encoder.config.hidden_size)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(hidden, num_labels)
        nn.init.normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
        return self.head(self.dropout(pooled))


LAYER_PATHS = ("encoder.layer", "layers", "transformer.layer")  # where BERT / XLM-R style encoders keep their layers


def _layer_holder(encoder: nn.Module) -> tuple[nn.Module, str] | None:
    for path in LAYER_PATHS:
        *parents, last = path.split(".")
        obj: Any = encoder
        for part in parents:
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if obj is not None and isinstance(getattr(obj, last, None), nn.ModuleList):
            return obj, last
    return None


def encoder_layers(encoder: nn.Module) -> nn.ModuleList | None:
    """The stack of transformer layers of a BERT / XLM-R style encoder."""
    found = _layer_holder(encoder)
    return None if found is None else getattr(found[0], found[1])


def keep_layers(model: MultiLabelClassifier, keep: Sequence[int]) -> None:
    """Keep only the encoder layers ``keep`` (in that order), in place: a distilled student's shape
    (training/finetune/distill.py). The config says so, so ``save_pretrained`` / ``from_pretrained`` round-trip
    the smaller encoder."""
    found = _layer_holder(model.encoder)
    if found is None:
        raise ValueError("cannot find the encoder's layers (not a BERT / XLM-R style encoder)")
    holder, attr = found
    layers = getattr(holder, attr)
    kept = nn.ModuleList([layers[i] for i in keep])
    for new_index, layer in enumerate(kept):
        for module in layer.modules():  # attention caches are indexed by layer (unused by an encoder; kept right)
            if hasattr(module, "layer_idx"):
                module.layer_idx = new_index  # type: ignore[assignment]  # nn.Module.__setattr__ is typed for Tensor | Module values
    setattr(holder, attr, kept)
    model.encoder.config.num_hidden_layers = len(kept)


def freeze(model: MultiLabelClassifier, embeddings: bool, bottom_layers: int) -> None:
    """Stop gradients for the embeddings and/or the bottom transformer layers (and the unused pooler)."""
    enc = model.encoder
    pooler = getattr(enc, "pooler", None)
    if pooler is not None:
        for p in pooler.parameters():
            p.requires_grad_(False)
    if embeddings:
        emb = getattr(enc, "embeddings", None) or enc.get_input_embeddings()
        for p in emb.parameters():
            p.requires_grad_(False)
    if bottom_layers:
        layers = encoder_layers(enc)
        if layers is None:
            raise ValueError("cannot find the encoder's layers to freeze")
        if bottom_layers > len(layers):
            raise ValueError(f"freeze_layers={bottom_layers} but the encoder has {len(layers)} layers")
        for layer in layers[:bottom_layers]:
            for p in layer.parameters():
                p.requires_grad_(False)


def quiet_transformers() -> None:
    """No per-load reports or shard progress bars: the run log and our own progress bar say what matters."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def load_base(base: str, attn_implementation: str | None = None) -> tuple[PreTrainedModel, Any, str]:
    """(encoder, fast tokenizer, text prefix) from a local directory or hub id.

    Uses the encoder package's loader (which knows an imported e5 checkpoint wants "passage: " before
    every text) and falls back to transformers' Auto classes."""
    quiet_transformers()
    encoder_load_base: Callable[[str], BaseEncoder] | None
    try:
        from shenhe.training.encoder.base import load_base as encoder_load_base
    except ImportError:
        encoder_load_base = None
    if encoder_load_base is not None:
        loaded = encoder_load_base(base)
        encoder, tokenizer, prefix = loaded.model, loaded.tokenizer, loaded.text_prefix
    else:
        from transformers import AutoModel, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(base, use_fast=True)
        encoder, prefix = AutoModel.from_pretrained(base), ""
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(f"{base}: needs a fast tokenizer (tokenizer.json) so serving can reproduce it")
    if attn_implementation and hasattr(encoder, "set_attn_implementation"):
        encoder.set_attn_implementation(attn_implementation)
    return encoder, tokenizer, prefix


def save_model(model: MultiLabelClassifier, tokenizer: Any, out_dir: Path, extra: dict[str, Any] | None = None) -> None:
    """Write the full model (encoder + tokenizer + head) so export needs nothing else."""
    from safetensors.torch import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    model.encoder.save_pretrained(out_dir / ENCODER_DIR)
    tokenizer.save_pretrained(out_dir / ENCODER_DIR)
    save_file({k: v.detach().cpu().contiguous() for k, v in model.head.state_dict().items()}, str(out_dir / HEAD_FILE))
    meta = {"pooling": model.pooling, "labels": list(CATEGORY_SLUGS), **(extra or {})}
    (out_dir / CLASSIFIER_FILE).write_text(json.dumps(meta, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


def load_model(model_dir: Path, attn_implementation: str | None = None) -> tuple[MultiLabelClassifier, Any, dict[str, Any]]:
    """Load what :func:`save_model` wrote: (model in eval mode, tokenizer, classifier.json)."""
    from safetensors.torch import load_file
    from transformers import AutoModel, AutoTokenizer

    quiet_transformers()
    meta = json.loads((model_dir / CLASSIFIER_FILE).read_text(encoding="utf-8"))
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir / ENCODER_DIR), use_fast=True)
    encoder = AutoModel.from_pretrained(str(model_dir / ENCODER_DIR))
    if attn_implementation and hasattr(encoder, "set_attn_implementation"):
        encoder.set_attn_implementation(attn_implementation)
    model = MultiLabelClassifier(encoder, num_labels=len(meta["labels"]), pooling=meta["pooling"])
    model.head.load_state_dict(load_file(str(model_dir / HEAD_FILE)))
    model.eval()
    return model, tokenizer, meta
