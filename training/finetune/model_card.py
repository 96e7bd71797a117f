"""MODEL_CARD.md for a bundle, rendered from ``templates/MODEL_CARD.md.j2`` (jinja2)."""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources
from typing import Any

from shenhe.models.bundle import BundleManifest, DataSource
from shenhe.models.policy import Policy

TEMPLATE = "MODEL_CARD.md.j2"


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def _worst_ap_drop(quality: dict[str, dict[str, float]]) -> float:
    return max((d for per in quality.values() for k, d in per.items() if k.startswith("ap_")), default=0.0)


def render_model_card(manifest: BundleManifest, policy: Policy, metrics: dict[str, Any],
                      sources: Sequence[DataSource]) -> str:
    import jinja2

    text = resources.files("shenhe.training.finetune").joinpath("templates", TEMPLATE).read_text(encoding="utf-8")
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                             keep_trailing_newline=True)
    env.filters["pct"] = _pct
    env.filters["worst_ap_drop"] = _worst_ap_drop
    points = {p["slug"]: p for p in metrics.get("operating_points", [])}
    return env.from_string(text).render(
        m=manifest, policy=policy, metrics=metrics, sources=sources, points=points,
        synthetic=[s for s in sources if s.synthetic],
        non_commercial=[s for s in sources if s.commercial is False],
        baseline=metrics.get("baseline"),
    )
