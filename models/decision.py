"""The block / review / pass rule, vectorised: the one place it is written.

The Predictor decides texts with it, threshold fitting counts the decisions it would make, and the
evaluation report draws its what-if curves with it. A category blocks when the policy lets it block,
the bundle was trained on it and its score reaches the block threshold; otherwise it goes to review
when the bundle scores it and its score reaches the review threshold. A text blocks if any category
blocks, else goes to review if any category (or a ``review`` word-list entry) does, else passes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from shenhe.models.policy import CATEGORY_SLUGS, Policy

PASS, REVIEW, BLOCK = 0, 1, 2
DECISION_NAMES = ("pass", "review", "block")


@dataclass(frozen=True)
class Thresholds:
    """A policy's per-category operating points as arrays in Article 9 order."""

    review: np.ndarray  # (9,) float
    block: np.ndarray  # (9,) float
    can_block: np.ndarray  # (9,) bool: the policy allows blocking and the bundle was trained on it
    trained: np.ndarray  # (9,) bool: the policy marks it trained and the bundle has a head for it
    reviewable: np.ndarray  # (9,) bool: the bundle scores it (untrained categories score 0, never review)

    @classmethod
    def from_policy(cls, policy: Policy, bundle_trained: np.ndarray | None = None) -> Thresholds:
        """``bundle_trained``: the manifest's trained mask (default: the policy's ``trained`` flags)."""
        cats = [policy.category(s) for s in CATEGORY_SLUGS]
        policy_trained = np.array([c.trained for c in cats], dtype=bool)
        scored = policy_trained if bundle_trained is None else np.asarray(bundle_trained, dtype=bool)
        return cls(
            review=np.array([c.review_threshold for c in cats], dtype=float),
            block=np.array([c.block_threshold for c in cats], dtype=float),
            can_block=np.array([c.can_block for c in cats], dtype=bool) & scored,
            trained=policy_trained & scored,
            reviewable=scored.copy(),
        )

    def flags(self, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per text and category: (blocks, goes to review) for ``scores`` [n, 9]; a category that blocks
        is not also counted as review."""
        return category_flags(scores, self.review, self.block, self.can_block, self.reviewable)

    def decide(self, scores: np.ndarray, term_review: np.ndarray | None = None) -> np.ndarray:
        return decide(scores, self.review, self.block, self.can_block, term_review, self.reviewable)


def category_flags(scores: np.ndarray, review: np.ndarray, block: np.ndarray, can_block: np.ndarray,
                   reviewable: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(blocks, reviews) boolean arrays shaped like ``scores``; ``review`` may be a scalar or per category."""
    blocks = (scores >= block) & can_block
    reviews = (scores >= review) & ~blocks
    if reviewable is not None:
        reviews &= reviewable
    return blocks, reviews


def decide(scores: np.ndarray, review: np.ndarray, block: np.ndarray, can_block: np.ndarray,
           term_review: np.ndarray | None = None, reviewable: np.ndarray | None = None) -> np.ndarray:
    """Per text: PASS, REVIEW or BLOCK (int8) by the model's scores, plus ``term_review`` (texts a
    ``review`` word-list entry matched) routed to review when nothing blocks them."""
    blocks, reviews = category_flags(scores, review, block, can_block, reviewable)
    blocked = blocks.any(axis=1)
    reviewed = reviews.any(axis=1)
    if term_review is not None:
        reviewed |= term_review
    return np.where(blocked, BLOCK, np.where(reviewed, REVIEW, PASS)).astype(np.int8)
