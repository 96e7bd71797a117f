"""Every documented command, given bad input, exits non-zero with one `error: ...` line (or typer's usage
message) and never a traceback. A new command must add a case here (the first test checks coverage)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from shenhe.cli import app
from tests.test_readme import _commands

runner = CliRunner()

# {t}: a temporary folder holding bad.yaml (not YAML) and bad.jsonl (a non-string text, then not JSON).
CASES: list[tuple[str, ...]] = [
    ("normalize",),
    ("train", "--out", "{t}/run", "--data", "{t}/nope"),
    ("train", "--out", "{t}/run", "--epochs", "-1", "--data", "{t}/nope"),
    ("train", "--out", "{t}/run", "--calibration", "fancy", "--data", "{t}"),
    ("export", "--run", "{t}/nope", "--out", "{t}/b"),
    ("export", "--run", "{t}", "--out", "{t}/b", "--calibration", "fancy"),
    ("distill", "--out", "{t}/s", "--teacher", "{t}/nope", "--layers", "4"),
    ("distill", "--out", "{t}/s", "--teacher", "{t}/nope", "--layers", "0"),
    ("distill", "--out", "{t}/s", "--resume"),
    ("card", "--bundle", "{t}/nope"),
    ("card", "--bundle", "{t}", "--check"),
    ("classify", "--bundle", "{t}/nope", "你好"),
    ("classify", "--input", "{t}/nope.jsonl"),
    ("classify", "--input", "{t}/bad.jsonl"),
    ("classify", "--policy", "{t}/bad.yaml", "你好"),
    ("classify", "--url", "http://127.0.0.1:9", "你好"),
    ("batch", "--input", "{t}/nope.jsonl", "--output", "{t}/out"),
    ("batch", "--input", "{t}/bad.jsonl", "--output", "{t}/out"),
    ("batch", "--input", "{t}/bad.yaml", "--output", "{t}/out"),
    ("batch", "--bundle", "{t}/nope", "--input", "{t}/bad.jsonl", "--output", "{t}/out"),
    ("serve", "--bundle", "{t}/nope"),
    ("serve", "--policy", "{t}/bad.yaml"),
    ("serve", "--keys", "{t}/bad.yaml"),
    ("eval", "--data", "{t}/nope.jsonl", "--out", "{t}/e"),
    ("eval", "--data", "{t}/bad.jsonl", "--out", "{t}/e"),
    ("promote", "{t}/nope", "--data", "{t}/nope.jsonl"),
    ("policy", "show", "--policy", "{t}/bad.yaml"),
    ("policy", "show", "--bundle", "{t}/nope"),
    ("data", "build", "--raw", "{t}/nope", "--out", "{t}/d"),
    ("data", "build", "--raw", "{t}/nope", "--out", "{t}/d", "--extra", "{t}/nope.jsonl"),
    ("data", "cards", "--stats", "{t}/nope.json"),
    ("data", "cards", "--stats", "{t}/bad.jsonl"),
    ("encoder", "import", "--out", "{t}/enc", "--corpus", "{t}/nope.txt"),
    ("review", "export", "--out", "{t}/x.jsonl", "--db-url", "nosuchdb://x"),
    ("review", "export", "--out", "{t}/x.jsonl", "--db-url", "sqlite:///{t}/nope/q.db"),
    ("review", "export", "--out", "{t}/x.jsonl", "--since", "last tuesday"),
    ("retrain", "--from-reviews", "{t}/nope.jsonl", "--out", "{t}/r", "--base-bundle", "{t}/nope"),
    ("retrain", "--from-reviews", "{t}/nope.jsonl", "--out", "{t}/r", "--eval-data", "{t}/bad.jsonl"),
    ("retrain", "--from-reviews", "{t}/bad.jsonl", "--out", "{t}/r", "--eval-data", "{t}/bad.jsonl"),
    ("retrain", "--from-reviews", "sqlite:///{t}/nope/q.db", "--out", "{t}/r", "--eval-data", "{t}/bad.jsonl"),
    ("retrain", "--from-reviews", "sqlite:///{t}/nope/q.db", "--out", "{t}/r", "--since", "soon"),
]


def test_every_command_has_a_bad_input_case() -> None:
    covered = {"shenhe " + " ".join(a for a in case if not a.startswith(("-", "{"))).split(" 你好")[0]
               for case in CASES}
    missing = [c for c in _commands(app) if not any(k == c or k.startswith(c + " ") for k in covered)]
    assert not missing, missing


@pytest.mark.parametrize("case", CASES, ids=[" ".join(c[:3]) for c in CASES])
def test_bad_input_is_one_line_not_a_traceback(case: tuple[str, ...], tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SHENHE_POLICY", raising=False)
    (tmp_path / "bad.yaml").write_text("not: [valid\n", encoding="utf-8")
    (tmp_path / "bad.jsonl").write_text('{"text": 1}\nnot json\n', encoding="utf-8")
    res = runner.invoke(app, [a.format(t=tmp_path) for a in case])
    assert res.exit_code != 0
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    assert "Traceback" not in res.output
    lines = [line for line in res.output.strip().splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 or "Usage: " in res.output, res.output
