"""Token windows over normalised text: the one tokenisation used by training, evaluation and serving.

A text that fits in ``max_length`` tokens is one window. A longer text becomes overlapping windows of
``max_length`` tokens (special tokens included) where consecutive windows share ``stride`` tokens; a
category's score for the text is its maximum over the windows, and the window that produced it is
kept (as a character span) to explain the decision.

This uses the ``tokenizers`` library's own truncation-with-overflow, which is what a transformers
fast tokenizer runs for ``return_overflowing_tokens=True, stride=...``: the trainer (through
``AutoTokenizer(...).backend_tokenizer``) and the predictor (``tokenizer.json``) cut identical windows.
No torch here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Encoding, Tokenizer

DEFAULT_MAX_LENGTH = 128
DEFAULT_STRIDE = 32


@dataclass(frozen=True, slots=True)
class Window:
    """One model input: token ids (special tokens included) of part of one text.

    ``char_start``/``char_end`` is the span of the *normalised* text the window covers."""

    text_index: int
    ids: tuple[int, ...]
    char_start: int
    char_end: int


class WindowTokenizer:
    """Cuts normalised texts into token windows.

    Holds its own copy of the tokenizer so the truncation settings never leak to a caller's object."""

    def __init__(self, tokenizer: Tokenizer, max_length: int = DEFAULT_MAX_LENGTH,
                 stride: int = DEFAULT_STRIDE, pad_token_id: int | None = None, text_prefix: str = "") -> None:
        self.tokenizer = Tokenizer.from_str(tokenizer.to_str())
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()
        # An encoder trained with an input prefix (e5: "passage: ") gets it in every window, right after
        # the leading special token, exactly as tokenising ``text_prefix + text`` would place it.
        self.text_prefix = text_prefix
        self.prefix_ids = _prefix_ids(self.tokenizer, text_prefix) if text_prefix else ()
        probe = self.tokenizer.encode("x", add_special_tokens=True)
        self._lead = next((k for k, sp in enumerate(probe.special_tokens_mask) if not sp), 1)
        self.n_special = self.tokenizer.num_special_tokens_to_add(is_pair=False) + len(self.prefix_ids)
        if max_length <= self.n_special + 1:
            raise ValueError(f"max_length {max_length} leaves no room for text tokens")
        # At most half a window of overlap: every token is scored at most twice, which bounds the cost of a
        # long text at ~2x its token count.
        max_stride = (max_length - self.n_special) // 2
        if not 0 <= stride <= max_stride:
            raise ValueError(f"stride must be in [0, {max_stride}] (half the {max_length - self.n_special} text "
                             f"tokens of a window), got {stride}")
        self.max_length = max_length
        self.stride = stride
        self.tokenizer.enable_truncation(max_length=max_length - len(self.prefix_ids), stride=stride,
                                         strategy="longest_first", direction="right")
        self.pad_token_id = _pad_id(tokenizer) if pad_token_id is None else pad_token_id

    @classmethod
    def from_file(cls, path: str | Path, max_length: int = DEFAULT_MAX_LENGTH, stride: int = DEFAULT_STRIDE,
                  pad_token_id: int | None = None, text_prefix: str = "") -> WindowTokenizer:
        return cls(Tokenizer.from_file(str(path)), max_length, stride, pad_token_id, text_prefix)

    def windows(self, texts: Sequence[str]) -> list[Window]:
        """All windows of ``texts`` (already normalised), text by text, in order."""
        out: list[Window] = []
        for i, enc in enumerate(self.tokenizer.encode_batch(list(texts), add_special_tokens=True)):
            for part in (enc, *enc.overflowing):
                out.append(self._window(i, part))
        return out

    def first_windows(self, texts: Sequence[str]) -> list[Window]:
        """One window per text: the first ``max_length`` tokens (what training sees)."""
        return [self._window(i, enc) for i, enc in
                enumerate(self.tokenizer.encode_batch(list(texts), add_special_tokens=True))]

    def _window(self, text_index: int, enc: Encoding) -> Window:
        content = [off for off, special in zip(enc.offsets, enc.special_tokens_mask, strict=True) if not special]
        start = content[0][0] if content else 0
        end = content[-1][1] if content else 0
        ids = enc.ids
        if self.prefix_ids:
            ids = [*ids[: self._lead], *self.prefix_ids, *ids[self._lead:]]
        return Window(text_index, tuple(ids), start, end)


def _prefix_ids(tokenizer: Tokenizer, prefix: str) -> tuple[int, ...]:
    """The ids ``prefix`` contributes in front of a text (a trailing space belongs to the text's first token)."""
    probe = "x"
    alone = tokenizer.encode(probe, add_special_tokens=False).ids
    joined = tokenizer.encode(prefix + probe, add_special_tokens=False).ids
    if len(joined) <= len(alone) or joined[-len(alone):] != alone:
        raise ValueError(f"text prefix {prefix!r} does not tokenise independently of the text")
    return tuple(joined[: -len(alone)])


def _pad_id(tokenizer: Tokenizer) -> int:
    for token in ("<pad>", "[PAD]"):
        tid = tokenizer.token_to_id(token)
        if tid is not None:
            return tid
    return 0


def pad_batch(windows: Sequence[Window], pad_token_id: int) -> tuple[np.ndarray, np.ndarray]:
    """``input_ids`` and ``attention_mask`` (int64, [batch, longest]) padded to the longest window."""
    longest = max(len(w.ids) for w in windows)
    ids = np.full((len(windows), longest), pad_token_id, dtype=np.int64)
    mask = np.zeros((len(windows), longest), dtype=np.int64)
    for row, w in enumerate(windows):
        ids[row, : len(w.ids)] = w.ids
        mask[row, : len(w.ids)] = 1
    return ids, mask


# What one extra model call costs, in padded tokens: the trade-off between padding and call overhead when
# windows of different lengths are split into calls (measured overhead ~0.3 ms per call on this CPU).
CALL_OVERHEAD_TOKENS = 48


def length_groups(lengths: Sequence[int], max_windows: int, max_tokens: int | None = None,
                  call_overhead: int = CALL_OVERHEAD_TOKENS) -> list[list[int]]:
    """Indices into ``lengths`` split into model calls: sorted by length, then cut where the padded tokens
    (calls x longest) plus ``call_overhead`` per call are smallest, each call at most ``max_windows`` windows
    and ``max_tokens`` padded tokens (a single window may exceed it). Every index appears once."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    sizes = [lengths[i] for i in order]
    n = len(order)
    best = [0.0] + [float("inf")] * n  # best[k]: cheapest split of the first k windows
    cut = [0] * (n + 1)
    for k in range(1, n + 1):
        for j in range(k - 1, max(-1, k - 1 - max_windows), -1):  # call = sorted windows j..k-1
            padded = (k - j) * sizes[k - 1]
            if max_tokens is not None and padded > max_tokens and k - j > 1:
                break
            cost = best[j] + padded + call_overhead
            if cost < best[k]:
                best[k], cut[k] = cost, j
    groups: list[list[int]] = []
    k = n
    while k > 0:
        groups.append(order[cut[k]:k])
        k = cut[k]
    return groups[::-1]


def window_tokens(windows: Sequence[Window]) -> int:
    """Tokens the model computes for these windows (overlaps counted): the unit of a request's cost."""
    return sum(len(w.ids) for w in windows)


RunModel = Callable[[np.ndarray, np.ndarray], np.ndarray]


def score_windows(windows: Sequence[Window], run: RunModel, pad_token_id: int, batch_size: int,
                  n_outputs: int, progress: Callable[[Iterable[list[int]]], Iterable[list[int]]] | None = None
                  ) -> np.ndarray:
    """Model outputs [n_windows, n_outputs] (float32) for ``windows``, in their order.

    The one window -> pad -> model loop of training, export, evaluation and serving: windows grouped by
    length (:func:`length_groups`: at most ``batch_size`` per call, cut where padding costs more than a call),
    each group padded to its longest window and passed to ``run(input_ids, mask)``."""
    out = np.zeros((len(windows), n_outputs), dtype=np.float32)
    batches: Iterable[list[int]] = length_groups([len(w.ids) for w in windows], batch_size)
    if progress is not None:
        batches = progress(batches)
    for batch in batches:
        ids, mask = pad_batch([windows[i] for i in batch], pad_token_id)
        out[batch] = run(ids, mask)
    return out


def max_over_windows(window_values: np.ndarray, windows: Sequence[Window], n_texts: int,
                     fill: float = -np.inf) -> tuple[np.ndarray, np.ndarray]:
    """Per text and column, the maximum over its windows and the index (into ``windows``) of that window.

    ``window_values`` is [n_windows, k]; returns ([n_texts, k] values, [n_texts, k] window indices).
    A text with no window gets ``fill`` and index -1."""
    k = window_values.shape[1]
    best = np.full((n_texts, k), fill, dtype=np.float64)
    arg = np.full((n_texts, k), -1, dtype=np.int64)
    for wi, w in enumerate(windows):
        row = window_values[wi]
        better = row > best[w.text_index]
        best[w.text_index] = np.where(better, row, best[w.text_index])
        arg[w.text_index] = np.where(better, wi, arg[w.text_index])
    return best, arg
