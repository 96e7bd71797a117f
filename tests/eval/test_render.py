"""The report renders offline in headless Chromium with every plot decoded (scripts/render_report.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from shenhe.eval.run import EvalResult

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "render_report.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("render_report", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


render_report = _load_script()
CHROMIUM = render_report.chromium_path()


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not installed (Debian: apt-get install -y chromium)")
def test_report_renders_offline_with_all_plots(full_report: EvalResult, tmp_path: Path) -> None:
    png = tmp_path / "report.png"
    result = render_report.render(full_report.report_path, png, width=1280, height=3000, min_images=8)
    assert result["ok"], result["problems"]
    assert result["images_loaded"] == "8/8"
    assert result["external_references"] == []
    assert result["screenshot"]["non_white_share"] > 0.02


def test_static_checks_catch_external_resources() -> None:
    html = '<link href="https://cdn.example.com/x.css"><img src="plot.png"><style>@import "a.css";</style>'
    found = render_report.static_checks(html)
    assert found["images_embedded"] == 0
    assert len(found["external_references"]) == 3
