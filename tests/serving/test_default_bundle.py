"""The README's curl example against the shipped bundle: an insult is blocked or reviewed, an everyday
sentence passes. Skipped until ``models/default`` exists (it is built by training + export)."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import httpx
import pytest

from tests.serving.conftest import REPO, ServerProcess, free_port, server_env

DEFAULT = REPO / "models" / "default"
DOC = REPO / "docs" / "serving.md"

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not (DEFAULT / "bundle.json").is_file(), reason="models/default not built yet"),
]


def readme_classify_payload() -> dict:
    """The JSON body of the first `curl ... /v1/classify` example in the serving README section."""
    text = DOC.read_text(encoding="utf-8")
    block = re.search(r"```bash\n(curl [^`]*?/v1/classify[^`]*?)```", text, re.S)
    assert block, "no curl /v1/classify example in the README section"
    args = shlex.split(block.group(1).replace("\\\n", " "))
    return json.loads(args[args.index("-d") + 1])


def test_readme_example_on_the_default_bundle(tmp_path: Path) -> None:
    payload = readme_classify_payload()
    env = server_env(tmp_path, f"sqlite:///{tmp_path / 'q.db'}", policy=None, keys=None)
    server = ServerProcess(args=[], env=env, log_path=tmp_path / "server.log", port=free_port()).start()
    try:
        r = httpx.post(f"{server.url}/v1/classify", json=payload, timeout=60)
    finally:
        server.stop()
    assert r.status_code == 200, r.text
    insult, everyday = r.json()["items"]
    assert insult["decision"] in ("block", "review") and "insult_defamation" in insult["categories"]
    assert everyday["decision"] == "pass"
