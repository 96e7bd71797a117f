"""Fixtures for the serving tests: a test policy, API keys, PostgreSQL schemas, and the real service
(``shenhe serve`` in a subprocess on a free port) on SQLite and on PostgreSQL.

The tiny bundle's scores are random-ish, so the test policy makes decisions deterministic: no score
reaches a threshold (review 0.999999, block 1.0) and the insult words below route to review through
the word list (``term_action: review``). Review-bound sentences are therefore known in advance.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
import yaml

if TYPE_CHECKING:
    from fastapi.testclient import TestClient

    from shenhe.serving.queue import ReviewStore
    from shenhe.serving.runtime import Runtime

REPO = Path(__file__).resolve().parents[2]
REVIEW_TERMS = ("傻逼", "废物")
INSULT = "你这个傻逼，滚出去"  # contains a review term
EVERYDAY = "今天天气很好，我们下午去公园散步吧。"
PG_HOST = "127.0.0.1"
PG_PORT = 5432

KEYS = {
    "classify": "test-classify-key-0123456789",
    "review": "test-review-key-0123456789ab",
    "admin": "test-admin-key-0123456789abc",
    "review2": "test-second-reviewer-key-0123",
    "metrics": "test-metrics-key-0123456789ab",
}


def auth(role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[role]}"}


def write_test_policy(path: Path, version: str = "test-2026.1") -> Path:
    from shenhe.models.policy import load_policy

    policy = load_policy()
    updates: dict[str, dict[str, object]] = {
        c.slug: {"review_threshold": 0.999999, "block_threshold": 1.0} for c in policy.categories
    }
    updates["insult_defamation"].update(terms=REVIEW_TERMS, term_action="review")
    path.write_text(policy.with_updates(updates, version=version).to_yaml(), encoding="utf-8")
    return path


def write_keys(path: Path) -> Path:
    path.write_text(yaml.safe_dump({"keys": [
        {"name": "monitor", "key": KEYS["classify"], "roles": ["classify"]},
        {"name": "reviewers", "key": KEYS["review"], "roles": ["review"]},
        {"name": "ops", "key": KEYS["admin"], "roles": ["admin"]},
        {"name": "bob", "key": KEYS["review2"], "roles": ["review"]},
        {"name": "prometheus", "key": KEYS["metrics"], "roles": ["metrics"]},
    ]}), encoding="utf-8")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ServerProcess:
    """``shenhe serve`` in its own process group (so a test can SIGKILL every process of it)."""

    args: list[str]
    env: dict[str, str]
    log_path: Path
    port: int
    proc: subprocess.Popen[bytes] | None = None
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 180.0) -> ServerProcess:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "shenhe.cli", "serve", "--port", str(self.port), *self.args],
            cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"server not ready after {timeout:.0f}s:\n{self.log_tail()}")

    def kill(self) -> None:
        """SIGKILL the arbiter and every worker at once, like a power cut. (Circus starts each worker
        in its own session, so killing the process group is not enough.)"""
        pids = self.pids() if self.proc is not None and self.proc.poll() is None else []
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(timeout=30)
        self._wait_gone(pids)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        pids = self.pids()
        self.proc.send_signal(signal.SIGTERM)  # the arbiter stops its workers
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=30)
        for pid in pids:  # anything left behind would keep the port
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        self._wait_gone(pids)

    @staticmethod
    def _wait_gone(pids: list[int]) -> None:
        import psutil

        procs = []
        for pid in pids:
            with contextlib.suppress(psutil.NoSuchProcess):
                procs.append(psutil.Process(pid))
        psutil.wait_procs(procs, timeout=10)

    def log_text(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def log_tail(self, n: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-n:])

    def pids(self) -> list[int]:
        import psutil

        assert self.proc is not None
        root = psutil.Process(self.proc.pid)
        return [root.pid, *(c.pid for c in root.children(recursive=True))]


def server_env(tmp: Path, db_url: str, policy: Path | None, keys: Path | None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHENHE_")}
    if policy is not None:
        env["SHENHE_POLICY"] = str(policy)
    env.update({
        "SHENHE_DB_URL": db_url,
        "BENTOML_HOME": str(tmp / "bentoml"),
        "BENTOML_DO_NOT_TRACK": "True",
        "OMP_NUM_THREADS": "1",
        "SHENHE_ORT_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
    })
    if keys is not None:
        env["SHENHE_KEYS_FILE"] = str(keys)
    env.update(extra)
    return env


# ---- PostgreSQL ----------------------------------------------------------------------------------


def _pg_user() -> str | None:
    try:
        import psycopg
    except ImportError:
        return None
    for user in ("postgres", "root"):
        try:
            with psycopg.connect(host=PG_HOST, port=PG_PORT, user=user, dbname="test", connect_timeout=3):
                return user
        except psycopg.Error:
            continue
    return None


@pytest.fixture(scope="session")
def pg_base() -> str:
    user = _pg_user()
    if user is None:
        pytest.skip(f"PostgreSQL not reachable on {PG_HOST}:{PG_PORT} (database 'test', user postgres or root)")
    return f"postgresql+psycopg://{user}@{PG_HOST}:{PG_PORT}/test"


@dataclass
class PgSchema:
    url: str
    name: str


def make_pg_schema(base: str) -> PgSchema:
    """A fresh schema; the URL puts it first on the search path so the tables land there."""
    import psycopg

    name = f"shenhe_test_{uuid.uuid4().hex[:10]}"
    user = base.split("//", 1)[1].split("@", 1)[0]
    with psycopg.connect(host=PG_HOST, port=PG_PORT, user=user, dbname="test", autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{name}"')
    return PgSchema(url=f"{base}?options=-csearch_path%3D{name}", name=name)


def drop_pg_schema(base: str, schema: PgSchema) -> None:
    import psycopg

    user = base.split("//", 1)[1].split("@", 1)[0]
    with psycopg.connect(host=PG_HOST, port=PG_PORT, user=user, dbname="test", autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema.name}" CASCADE')


@pytest.fixture
def pg_url(pg_base: str) -> Iterator[str]:
    schema = make_pg_schema(pg_base)
    yield schema.url
    drop_pg_schema(pg_base, schema)


# ---- servers -------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def serving_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("serving")
    return {"policy": write_test_policy(root / "policy.yaml"), "keys": write_keys(root / "keys.yaml"), "root": root}


def _start(tiny_bundle: Path, files: dict[str, Path], name: str, db_url: str, **extra: str) -> ServerProcess:
    tmp = files["root"] / name
    tmp.mkdir(exist_ok=True)
    # Second opinions off on the shared servers: FIFO assertions need a queue without random copies
    # (tests/serving/test_console.py turns them on where it tests them).
    env = server_env(tmp, db_url, files["policy"], files["keys"],
                     **{"SHENHE_SECOND_OPINION_SHARE": "0", **extra})
    return ServerProcess(args=["--bundle", str(tiny_bundle)], env=env, log_path=tmp / "server.log",
                         port=free_port()).start()


@pytest.fixture(scope="session")
def sqlite_server(tiny_bundle: Path, serving_files: dict[str, Path]) -> Iterator[ServerProcess]:
    db = serving_files["root"] / "sqlite" / "queue.db"
    db.parent.mkdir(exist_ok=True)
    server = _start(tiny_bundle, serving_files, "sqlite", f"sqlite:///{db}")
    server.extra["db_url"] = f"sqlite:///{db}"
    yield server
    server.stop()


@pytest.fixture(scope="session")
def postgres_server(tiny_bundle: Path, serving_files: dict[str, Path], pg_base: str) -> Iterator[ServerProcess]:
    schema = make_pg_schema(pg_base)
    server = _start(tiny_bundle, serving_files, "postgres", schema.url)
    server.extra["db_url"] = schema.url
    yield server
    server.stop()
    drop_pg_schema(pg_base, schema)


# ---- fixtures shared by the test modules ---------------------------------------------------------

BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@pytest.fixture(scope="module", params=BACKENDS)
def server(request: pytest.FixtureRequest) -> ServerProcess:
    """The live service on each database backend (the module's tests run once per backend)."""
    return request.getfixturevalue(f"{request.param}_server")


@pytest.fixture(scope="module")
def store(server: ServerProcess) -> Iterator[ReviewStore]:
    from shenhe.serving.queue import ReviewStore

    s = ReviewStore(str(server.extra["db_url"]))
    yield s
    s.close()


def inprocess_runtime(tiny_bundle: Path, files: dict[str, Path], tmp_path: Path, **settings: Any) -> Iterator[Runtime]:
    """A Runtime on the tiny bundle and a fresh SQLite queue, installed in the /v1 app (no server)."""
    from shenhe.serving.api import app
    from shenhe.serving.config import ServingConfig
    from shenhe.serving.runtime import Runtime

    rt = Runtime.start(ServingConfig.from_env({}, bundle=tiny_bundle, policy=files["policy"],
                                              db_url=f"sqlite:///{tmp_path / 'q.db'}", ort_threads=1, **settings))
    app.state.runtime = rt
    yield rt
    app.state.runtime = None
    rt.close()


def loopback_client() -> TestClient:
    from fastapi.testclient import TestClient

    from shenhe.serving.api import app

    return TestClient(app, client=("127.0.0.1", 40000))
