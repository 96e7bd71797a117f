"""Score texts with a bundle's ONNX model and turn scores into policy decisions.

Only onnxruntime, tokenizers and numpy (plus ``models.*``): serving never needs torch or transformers.
Steps per text: shared normalisation -> token windows -> INT8 ONNX logits -> (a bundle with an n-gram
component: each window's logits blended with the text's n-gram logits, ``models/ngram.py``) -> per-category
calibration -> maximum over windows -> policy thresholds and word lists -> :class:`models.types.Prediction`.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shenhe.models.bundle import Bundle, BundleError, check_policy_fits, load_bundle
from shenhe.models.cores import SPIN_ENV, default_threads
from shenhe.models.decision import Thresholds
from shenhe.models.ngram import NgramError, NgramModel, blend_arrays, blend_logits
from shenhe.models.normalize import Normalized, normalize
from shenhe.models.policy import CATEGORY_SLUGS, Policy, load_policy
from shenhe.models.terms import TermMatcher
from shenhe.models.types import Decision, ModelInfo, Prediction, Reason
from shenhe.models.windowing import Window, WindowTokenizer, max_over_windows, score_windows


@dataclass(frozen=True)
class Prepared:
    """Texts made ready for the model: their normalisations, which are non-empty, and their windows."""

    norms: list[Normalized]
    live: list[int]  # indices of texts with a non-empty normalisation (windows' text_index counts these)
    windows: list[Window]
    ngram: np.ndarray | None = None  # n-gram logits [len(live), 9] when the bundle blends an n-gram model

    @property
    def tokens(self) -> int:
        """Tokens the model will compute for these texts (window overlaps counted)."""
        return sum(len(w.ids) for w in self.windows)


class Predictor:
    """Loads a bundle once; ``score`` and ``predict`` are safe to call from one thread at a time per
    instance (onnxruntime sessions themselves are thread-safe for ``run``)."""

    def __init__(self, bundle_dir: str | Path | None = None, policy: Policy | str | Path | None = None,
                 intra_op_threads: int | None = None, providers: Sequence[str] | None = None,
                 allow_spinning: bool | None = None) -> None:
        import onnxruntime as ort

        self.bundle: Bundle = load_bundle(bundle_dir)
        self.manifest = self.bundle.manifest
        self.info = ModelInfo(name=self.manifest.name, version=self.manifest.version)
        if policy is None:
            self.policy = self.bundle.policy
        else:
            self.policy = policy if isinstance(policy, Policy) else load_policy(policy)
            check_policy_fits(self.policy, self.manifest, "policy")
        self.intra_op_threads = intra_op_threads or default_threads()
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.intra_op_threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Idle worker threads spin unless told not to (models/cores.py: SHENHE_ORT_SPINNING).
        spin = allow_spinning if allow_spinning is not None else os.environ.get(SPIN_ENV, "1") != "0"
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        try:
            self.session = ort.InferenceSession(str(self.bundle.model_path), sess_options=opts,
                                                providers=list(providers or ["CPUExecutionProvider"]))
        except Exception as e:  # onnxruntime raises its own exception types for a malformed file
            raise BundleError(f"{self.bundle.model_path}: onnxruntime cannot load it ({str(e).splitlines()[0][:200]})") from None
        try:
            self.windower = WindowTokenizer.from_file(self.bundle.tokenizer_path, self.manifest.max_length,
                                                      self.manifest.window_stride, self.manifest.pad_token_id,
                                                      self.manifest.text_prefix)
        except Exception as e:  # tokenizers raises a bare Exception on a malformed file
            raise BundleError(f"{self.bundle.tokenizer_path}: cannot load tokenizer ({str(e).splitlines()[0][:200]})") from None
        self.ngram: NgramModel | None = None
        self._blend: np.ndarray | None = None  # [3, 9] (models/ngram.py: blend_arrays)
        if self.bundle.ngram_path is not None:
            self.ngram, self._blend = self._load_ngram(self.bundle.ngram_path)
        self._calibrators: list[Callable[[np.ndarray], np.ndarray] | None] = [
            self.manifest.calibration[s].apply if s in self.manifest.trained_categories else None
            for s in CATEGORY_SLUGS
        ]
        self.set_policy(self.policy)

    def _load_ngram(self, path: Path) -> tuple[NgramModel, np.ndarray]:
        assert self.manifest.ngram is not None
        try:
            model = NgramModel.load(path)
        except NgramError as e:
            raise BundleError(str(e)) from None
        missing = [s for s in self.manifest.ngram.blend if s not in model.categories]
        if missing:
            raise BundleError(f"{path}: no n-gram weights for blended category {missing[0]!r}")
        return model, blend_arrays(self.manifest.ngram.blend)

    def set_policy(self, policy: Policy) -> None:
        """Swap the operating policy (thresholds, word lists) without reloading the model."""
        check_policy_fits(policy, self.manifest, "policy")
        self.policy = policy
        self._terms = TermMatcher(policy)
        # A category blocks only when the policy allows it AND the bundle was trained on it.
        self._thresholds = Thresholds.from_policy(policy, self.manifest.trained_mask)

    def with_policy(self, policy: Policy) -> Predictor:
        """A copy sharing this one's model session and tokenizer, deciding by ``policy`` (this one unchanged,
        so a request already scoring with it keeps its policy)."""
        clone = copy.copy(self)
        clone.set_policy(policy)
        return clone

    # -- scoring -------------------------------------------------------------------------------------

    def run_model(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """Raw logits [batch, 9] for padded windows: the one onnxruntime call (the batcher calls it too)."""
        (logits,) = self.session.run(["logits"], {"input_ids": input_ids, "attention_mask": attention_mask})
        return logits

    def prepare(self, texts: Sequence[str]) -> Prepared:
        """Normalise and cut into windows: everything before the model call (no onnxruntime here)."""
        norms = [normalize(t) for t in texts]
        live = [i for i, norm in enumerate(norms) if norm.text]  # empty text: no model call, scores 0
        windows = self.windower.windows([norms[i].text for i in live]) if live else []
        return Prepared(norms, live, windows, self._ngram_logits(norms, live))

    def _ngram_logits(self, norms: Sequence[Normalized], live: Sequence[int]) -> np.ndarray | None:
        return None if self.ngram is None else self.ngram.logits([norms[i].text for i in live])

    def finish_scores(self, prepared: Prepared, window_logits: np.ndarray
                      ) -> tuple[np.ndarray, list[list[tuple[int, int]]]]:
        """Calibrated scores [n, 9] and, per text and category, the original-text span of the best window."""
        norms, live, windows = prepared.norms, prepared.live, prepared.windows
        n = len(norms)
        scores = np.zeros((n, len(CATEGORY_SLUGS)), dtype=np.float64)
        spans = [[(0, norm.original_length)] * len(CATEGORY_SLUGS) for norm in norms]
        if not live:
            return scores, spans
        if self._blend is not None:
            ngram = prepared.ngram if prepared.ngram is not None else self._ngram_logits(norms, live)
            assert ngram is not None
            text_of = np.fromiter((w.text_index for w in windows), dtype=np.int64, count=len(windows))
            window_logits = blend_logits(window_logits, ngram[text_of], self._blend)
        probs = np.zeros(window_logits.shape, dtype=np.float64)
        for c, calibrate in enumerate(self._calibrators):
            if calibrate is not None:  # untrained categories stay 0: the model has no signal for them
                probs[:, c] = calibrate(window_logits[:, c])
        best, arg = max_over_windows(probs, windows, len(live))
        per_text = np.bincount([w.text_index for w in windows], minlength=len(live))
        for row, i in enumerate(live):
            scores[i] = best[row]
            if per_text[row] > 1:  # a long text: point at the window behind each score
                spans[i] = [norms[i].to_original_span(windows[w].char_start, windows[w].char_end) for w in arg[row]]
        return scores, spans

    def finish(self, prepared: Prepared, window_logits: np.ndarray) -> list[Prediction]:
        """Policy decisions from the window logits of :meth:`prepare`'s windows (in their order)."""
        scores, spans = self.finish_scores(prepared, window_logits)
        blocks, reviews = self._thresholds.flags(scores)
        return [self._decide(norm, scores[i], spans[i], blocks[i], reviews[i]) for i, norm in enumerate(prepared.norms)]

    def window_logits(self, prepared: Prepared, batch_size: int = 32) -> np.ndarray:
        return score_windows(prepared.windows, self.run_model, self.manifest.pad_token_id, batch_size,
                             len(CATEGORY_SLUGS))

    def score(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """Calibrated probabilities [n, 9] (Article 9 order); untrained categories are 0."""
        prepared = self.prepare(texts)
        scores, _ = self.finish_scores(prepared, self.window_logits(prepared, batch_size))
        return scores

    def predict(self, texts: Sequence[str], batch_size: int = 32) -> list[Prediction]:
        prepared = self.prepare(texts)
        return self.finish(prepared, self.window_logits(prepared, batch_size))

    # -- decisions -----------------------------------------------------------------------------------

    def decide(self, text: str, scores: np.ndarray, spans: Sequence[tuple[int, int]] | None = None) -> Prediction:
        """The policy decision for ``text`` given its calibrated ``scores`` (and best-window spans)."""
        norm = normalize(text)
        row = np.asarray(scores, dtype=np.float64)
        blocks, reviews = self._thresholds.flags(row[None, :])
        return self._decide(norm, row, list(spans) if spans is not None else [(0, len(text))] * len(CATEGORY_SLUGS),
                            blocks[0], reviews[0])

    def _decide(self, norm: Normalized, scores: np.ndarray, spans: Sequence[tuple[int, int]],
                blocks: np.ndarray, reviews: np.ndarray) -> Prediction:
        """One text's Prediction from its model flags (:mod:`shenhe.models.decision`) and word-list matches."""
        block_t, review_t = self._thresholds.block, self._thresholds.review
        reasons: list[Reason] = []
        blocked: list[str] = []
        reviewed: list[str] = []
        for c, slug in enumerate(CATEGORY_SLUGS):
            if blocks[c]:
                blocked.append(slug)
                reasons.append(Reason(slug, "block", float(scores[c]), float(block_t[c]), (spans[c][0], spans[c][1])))
            elif reviews[c]:
                reviewed.append(slug)
                reasons.append(Reason(slug, "review", float(scores[c]), float(review_t[c]), (spans[c][0], spans[c][1])))
        matches = self._terms.find(norm)
        # Allow-list phrases remove their category's model flag (kept as an `allow` reason).
        for m in matches:
            if m.action != "allow" or not any(r.category == m.category and r.kind in ("block", "review")
                                              for r in reasons):
                continue
            flag = next(r for r in reasons if r.category == m.category and r.kind in ("block", "review"))
            reasons = [r for r in reasons if r is not flag]
            reasons.append(Reason(m.category, "allow", flag.score, flag.threshold, (m.start, m.end), flag.kind))
            (blocked if flag.kind == "block" else reviewed).remove(m.category)
        # Operator word lists: a block entry blocks (an operator's rule, so also on categories the model
        # cannot block); a review entry routes to review. One reason per category.
        for m in matches:
            if m.action not in ("review", "block") or m.category in blocked:
                continue
            c = CATEGORY_SLUGS.index(m.category)
            threshold = float(block_t[c] if m.action == "block" else review_t[c])
            if m.action == "block":
                if m.category in reviewed:
                    reviewed.remove(m.category)
                blocked.append(m.category)
            elif m.category in reviewed:
                continue
            else:
                reviewed.append(m.category)
            reasons.append(Reason(m.category, "term", float(scores[c]), threshold, (m.start, m.end), m.action))
        decision: Decision
        if blocked:
            decision, categories = "block", [s for s in CATEGORY_SLUGS if s in blocked]
        elif reviewed:
            decision, categories = "review", [s for s in CATEGORY_SLUGS if s in reviewed]
        else:
            decision, categories = "pass", []
        return Prediction(
            scores={slug: float(scores[c]) for c, slug in enumerate(CATEGORY_SLUGS)},
            decision=decision,
            categories=categories,
            reasons=reasons,
            matches=matches,
            model=self.info,
            policy_version=self.policy.version,
        )
