from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml
from typer.testing import CliRunner

from shenhe.cli import app
from shenhe.models.policy import SHIPPED_POLICY

runner = CliRunner()


def test_policy_show_lists_nine_categories() -> None:
    res = runner.invoke(app, ["policy", "show"])
    assert res.exit_code == 0, res.output
    for slug in ("constitution", "national_security", "insult_defamation", "other_illegal"):
        assert slug in res.output
    assert "(never)" in res.output  # constitution is untrained: never blocks


def test_policy_show_is_the_policy_classify_uses(monkeypatch) -> None:
    import json

    from shenhe.models.bundle import load_bundle

    monkeypatch.delenv("SHENHE_POLICY", raising=False)
    monkeypatch.delenv("SHENHE_BUNDLE", raising=False)
    tuned = load_bundle().policy.category("ethnic_hatred")
    placeholder = yaml.safe_load(SHIPPED_POLICY.read_text(encoding="utf-8"))
    assert tuned.block_threshold != next(c["block_threshold"] for c in placeholder["categories"]
                                         if c["slug"] == "ethnic_hatred")  # the two files differ
    res = runner.invoke(app, ["policy", "show", "--json"])
    assert res.exit_code == 0, res.output
    shown = json.loads(res.output)
    assert "models/default/policy.yaml (bundle shenhe-me5-zh" in shown["source"]
    row = next(c for c in shown["categories"] if c["slug"] == "ethnic_hatred")
    assert row["block_threshold"] == tuned.block_threshold and row["review_threshold"] == tuned.review_threshold
    res = runner.invoke(app, ["policy", "show"])
    assert "models/default/policy.yaml (bundle" in res.output.replace("\n", "")
    assert f"{tuned.review_threshold:.3f}" in res.output
    # --policy wins, and says so.
    res = runner.invoke(app, ["policy", "show", "--policy", str(SHIPPED_POLICY), "--json"])
    assert json.loads(res.output)["source"] == str(SHIPPED_POLICY)


def test_policy_show_broken_file_is_one_line_exit_2(tmp_path: Path) -> None:
    data = yaml.safe_load(SHIPPED_POLICY.read_text(encoding="utf-8"))
    data["categories"][5]["review_threshold"] = "high"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    # A real process: checks the exit code and that stderr is one line, no traceback.
    proc = subprocess.run(
        [sys.executable, "-m", "shenhe.cli", "policy", "show", "--policy", str(bad)],
        capture_output=True, text=True, check=False,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "review_threshold" in lines[0] and "rumor" in lines[0]
    assert "Traceback" not in proc.stderr


def test_normalize_command() -> None:
    res = runner.invoke(app, ["normalize", "微信：Ｖ　x１２３\u200b４，發財！！！！！！"])
    assert res.exit_code == 0
    assert res.output.strip() == "微信:V x1234,发财!!!"
