"""`shenhe classify`: offline text and file modes, and one-line errors for unusable bundles and policies."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from shenhe.models.policy import CATEGORY_SLUGS

ROOT = Path(__file__).resolve().parents[2]


def shenhe(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "shenhe.cli", *args], capture_output=True, text=True, cwd=ROOT,
                          check=False, env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "HOME": str(Path.home())})


def one_line_error(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    for n in needles:
        assert n in lines[0], lines[0]


def test_single_text_json(tiny_bundle: Path) -> None:
    proc = shenhe("classify", "--bundle", str(tiny_bundle), "--json", "--threads", "1", "你这个傻逼，滚回你老家去")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert list(out["scores"]) == list(CATEGORY_SLUGS)
    assert out["decision"] in ("pass", "review", "block")
    assert out["model"] == {"name": "tiny", "version": "0.0.1"}
    assert any(m["term"] == "傻逼" and m["start"] == 3 and m["end"] == 5 for m in out["matches"])


def test_single_text_table(tiny_bundle: Path) -> None:
    proc = shenhe("classify", "--bundle", str(tiny_bundle), "--threads", "1", "今天天气不错，出去走走")
    assert proc.returncode == 0, proc.stderr
    assert "insult_defamation" in proc.stdout and "untrained" in proc.stdout and "policy" in proc.stdout


def test_file_mode_keeps_input_fields(tiny_bundle: Path, tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    rows = [{"id": "a", "text": "你这个傻逼", "channel": "comments"}, {"id": "b", "text": ""},
            {"id": "c", "text": "今天天气不错，出去走走" * 30}]
    src.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
    dst = tmp_path / "out" / "pred.jsonl"
    proc = shenhe("classify", "--bundle", str(tiny_bundle), "--input", str(src), "--output", str(dst),
                  "--threads", "1", "--quiet")
    assert proc.returncode == 0, proc.stderr
    out = [json.loads(line) for line in dst.read_text(encoding="utf-8").splitlines()]
    assert [o["id"] for o in out] == ["a", "b", "c"]
    assert out[0]["channel"] == "comments" and out[0]["text"] == "你这个傻逼"
    for o in out:
        assert {"decision", "scores", "categories", "reasons", "matches", "model", "policy_version"} <= set(o)
    assert out[1]["decision"] == "pass"


def test_bad_input_line_is_one_line_error(tiny_bundle: Path, tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text('{"text": "好"}\n{"txt": "oops"}\n', encoding="utf-8")
    proc = shenhe("classify", "--bundle", str(tiny_bundle), "--input", str(src), "--output", str(tmp_path / "o.jsonl"))
    one_line_error(proc, "in.jsonl:2", "'text'")
    assert not (tmp_path / "o.jsonl").exists()  # no partial output


def test_empty_bundle_directory(tmp_path: Path) -> None:
    one_line_error(shenhe("classify", "--bundle", str(tmp_path), "你好"), "bundle.json missing")


def test_corrupted_model_hash_mismatch(tiny_bundle: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bad)
    with (bad / "model.onnx").open("r+b") as f:
        f.seek(200)
        byte = f.read(1)
        f.seek(200)
        f.write(bytes([byte[0] ^ 0xFF]))
    one_line_error(shenhe("classify", "--bundle", str(bad), "你好"), "model.onnx", "hash")


def test_unknown_policy_category(tiny_bundle: Path, tmp_path: Path) -> None:
    data = yaml.safe_load((tiny_bundle / "policy.yaml").read_text(encoding="utf-8"))
    data["categories"][3]["slug"] = "hate_speech"
    pol = tmp_path / "policy.yaml"
    pol.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    one_line_error(shenhe("classify", "--bundle", str(tiny_bundle), "--policy", str(pol), "你好"),
                   "unknown category slug 'hate_speech'")


def test_bundle_manifest_with_unknown_category(tiny_bundle: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bad)
    manifest = json.loads((bad / "bundle.json").read_text(encoding="utf-8"))
    manifest["trained_categories"].append("hate_speech")
    (bad / "bundle.json").write_text(json.dumps(manifest), encoding="utf-8")
    one_line_error(shenhe("classify", "--bundle", str(bad), "你好"), "unknown category 'hate_speech'")


@pytest.mark.parametrize("args", [["--input", "x.jsonl", "text"], []])
def test_text_xor_input(args: list[str]) -> None:
    one_line_error(shenhe("classify", *args), "either TEXT or --input")


@pytest.mark.parametrize("command", ["train", "export", "classify"])
def test_help_renders(command: str) -> None:
    from typer.testing import CliRunner

    from shenhe.cli import app

    res = CliRunner().invoke(app, [command, "--help"])
    assert res.exit_code == 0, res.output
    assert "Usage" in res.output
