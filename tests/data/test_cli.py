"""`shenhe data build` / `shenhe data cards` from the command line."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from typer.testing import CliRunner

from shenhe.cli import app

runner = CliRunner()


def test_build_prints_the_category_table_and_writes_the_corpus(tmp_path: Path, raw_dir: Path, seed_dir: Path,
                                                              extra_file: Path) -> None:
    res = runner.invoke(app, ["data", "build", "--raw", str(raw_dir), "--out", str(tmp_path), "--seed-dir",
                              str(seed_dir), "--extra", str(extra_file), "--no-hf", "--no-progress"])
    assert res.exit_code == 0, res.output
    table_line = next(line for line in res.output.splitlines() if re.match(r"^\W*national_security\s", line))
    assert re.findall(r"\d+", table_line) == ["0", "0", "0", "1", "0", "0", "0"]  # seed train: 1
    assert "seed" in res.output and "extra" in res.output
    assert "malformed rows: COLD: 2 skipped" in res.output
    for split in ("train", "dev", "test"):
        assert (tmp_path / f"{split}.jsonl").stat().st_size > 0
    assert not (tmp_path / "hf").exists()


def test_unknown_source_is_a_one_line_error(tmp_path: Path, raw_dir: Path) -> None:
    res = runner.invoke(app, ["data", "build", "--raw", str(raw_dir), "--out", str(tmp_path), "--sources", "COLD,Weibo"])
    assert res.exit_code == 2
    assert res.output.strip().splitlines()[-1].startswith("error: unknown source 'Weibo'")


def test_missing_raw_folder_is_a_one_line_error(tmp_path: Path) -> None:
    res = runner.invoke(app, ["data", "build", "--raw", str(tmp_path / "nope"), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "does not exist" in res.output


def test_cards_command_updates_then_checks(tmp_path: Path, raw_dir: Path, seed_dir: Path) -> None:
    out = tmp_path / "build"
    assert runner.invoke(app, ["data", "build", "--raw", str(raw_dir), "--out", str(out), "--seed-dir",
                               str(seed_dir), "--no-hf", "--no-progress"]).exit_code == 0
    cards = tmp_path / "cards"
    cards.mkdir()
    (cards / "README.md").write_text("# x\n<!-- BEGIN GENERATED: overview -->\n<!-- END GENERATED: overview -->\n",
                                     encoding="utf-8")
    (cards / "COLD.md").write_text("# COLD\n<!-- BEGIN GENERATED: counts-COLD -->\nstale\n"
                                   "<!-- END GENERATED: counts-COLD -->\n", encoding="utf-8")
    stats = out / "stats.json"
    res = runner.invoke(app, ["data", "cards", "--stats", str(stats), "--cards", str(cards), "--check"])
    assert res.exit_code == 1 and "out of date" in res.output and "missing card" in res.output
    shutil.copy(cards / "COLD.md", tmp_path / "COLD.before")
    res = runner.invoke(app, ["data", "cards", "--stats", str(stats), "--cards", str(cards)])
    assert res.exit_code == 0
    cold = (cards / "COLD.md").read_text(encoding="utf-8")
    ethnic = json.loads(stats.read_text(encoding="utf-8"))["sources"]["COLD"]["rows"]["train"]["ethnic_hatred"]
    assert f"| ethnic_hatred | {ethnic} |" in cold and "stale" not in cold


def test_extra_builds_without_the_raw_folder(tmp_path: Path, seed_dir: Path, extra_file: Path) -> None:
    """`shenhe review export` then `shenhe data build --extra FILE` on a machine without ../shared/data."""
    out = tmp_path / "o"
    res = runner.invoke(app, ["data", "build", "--raw", str(tmp_path / "nope"), "--out", str(out), "--seed-dir",
                              str(seed_dir), "--extra", str(extra_file), "--no-hf", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "does not exist: building from seed_synthetic and --extra only" in res.output
    rows = [json.loads(line) for split in ("train", "dev") for line in (out / f"{split}.jsonl").open(encoding="utf-8")]
    extra_texts = {json.loads(line)["text"] for line in extra_file.open(encoding="utf-8") if line.strip()}
    assert extra_texts & {r["text"] for r in rows}
    assert (out / "test.jsonl").stat().st_size == 0  # no public data: no test rows


def test_missing_extra_file_is_a_one_line_error(tmp_path: Path) -> None:
    res = runner.invoke(app, ["data", "build", "--raw", str(tmp_path / "nope"), "--out", str(tmp_path / "o"),
                              "--extra", str(tmp_path / "labels.jsonl")])
    assert res.exit_code == 2
    assert res.output.strip().splitlines() == [f"error: --extra file {tmp_path / 'labels.jsonl'} not found "
                                               "(export reviewer labels with `shenhe review export`)"]


def test_without_datasets_hf_is_skipped_or_a_one_line_error(tmp_path: Path, seed_dir: Path, extra_file: Path,
                                                            monkeypatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "datasets", None)  # `import datasets` now fails, as in the serving env
    args = ["data", "build", "--raw", str(tmp_path / "nope"), "--seed-dir", str(seed_dir), "--extra", str(extra_file),
            "--no-progress"]
    res = runner.invoke(app, [*args, "--out", str(tmp_path / "a")])
    assert res.exit_code == 0, res.output
    assert "not writing" in res.output and "datasets package is not installed" in res.output
    assert (tmp_path / "a" / "train.jsonl").is_file() and not (tmp_path / "a" / "hf").exists()
    res = runner.invoke(app, [*args, "--out", str(tmp_path / "b"), "--hf"])
    assert res.exit_code == 2
    (line,) = res.output.strip().splitlines()
    assert line.startswith("error: --hf needs the datasets package") and "pip install -e '.[train]'" in line
    assert not (tmp_path / "b").exists()
