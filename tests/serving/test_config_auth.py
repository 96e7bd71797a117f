"""Serving settings from the environment, API keys files and role checks."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from shenhe.serving.auth import AuthFailure, KeyRing, KeysFileError, digest, presented_key
from shenhe.serving.config import ConfigError, ServingConfig


def test_defaults_and_env() -> None:
    c = ServingConfig.from_env({})
    assert c.max_text_chars == 20_000 and c.port == 3000 and c.workers == 1
    assert not c.log_texts and c.keys_file is None and c.max_request_tokens == 32_768 and c.request_timeout_s == 30
    assert c.db_url.startswith("sqlite:///") and c.db_url.endswith("var/shenhe.db")
    c = ServingConfig.from_env({"SHENHE_MAX_TEXT_CHARS": "500", "SHENHE_LOG_TEXTS": "true", "SHENHE_PORT": " ",
                                "SHENHE_DB_URL": "postgresql+psycopg://u@h/db", "SHENHE_BATCH_WAIT_MS": "0.5"})
    assert c.max_text_chars == 500 and c.log_texts and c.batch_wait_ms == 0.5 and c.port == 3000
    assert c.db_url == "postgresql+psycopg://u@h/db"
    assert ServingConfig.from_env({"SHENHE_PORT": "4000"}, port=5000).port == 5000  # overrides win


def test_database_url_alias() -> None:
    # SHENHE_DATABASE_URL (the spelling deployment templates use) works where SHENHE_DB_URL is unset.
    url = "postgresql+psycopg://u@h/db"
    assert ServingConfig.from_env({"SHENHE_DATABASE_URL": url}).db_url == url
    assert ServingConfig.from_env({"SHENHE_DATABASE_URL": url, "SHENHE_DB_URL": url}).db_url == url
    with pytest.raises(ConfigError, match="SHENHE_DB_URL and SHENHE_DATABASE_URL"):
        ServingConfig.from_env({"SHENHE_DATABASE_URL": url, "SHENHE_DB_URL": "sqlite:///x.db"})
    with pytest.raises(ConfigError, match="^SHENHE_DATABASE_URL: "):
        ServingConfig.from_env({"SHENHE_DATABASE_URL": "var/shenhe.db"})


def test_to_env_round_trips(tmp_path: Path) -> None:
    c = ServingConfig.from_env({}, bundle=tmp_path, max_text_chars=123, log_texts=True)
    again = ServingConfig.from_env(c.to_env())
    assert again == c.model_copy(update={"bundle": tmp_path.resolve()})


@pytest.mark.parametrize(("env", "needle"), [
    ({"SHENHE_MAX_TEXT_CHARS": "many"}, "SHENHE_MAX_TEXT_CHARS"),
    ({"SHENHE_MAX_TEXT_CHARS": "0"}, "SHENHE_MAX_TEXT_CHARS"),
    ({"SHENHE_PORT": "70000"}, "SHENHE_PORT"),
    ({"SHENHE_DB_URL": "var/shenhe.db"}, "SHENHE_DB_URL"),
    ({"SHENHE_LOG_TEXTS": "perhaps"}, "SHENHE_LOG_TEXTS"),
])
def test_bad_settings_name_the_variable(env: dict[str, str], needle: str) -> None:
    with pytest.raises(ConfigError) as e:
        ServingConfig.from_env(env)
    assert needle in str(e.value) and "\n" not in str(e.value)


def write(tmp_path: Path, data: object) -> Path:
    p = tmp_path / "keys.yaml"
    p.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data, encoding="utf-8")
    return p


def test_keys_roles_and_hashes(tmp_path: Path) -> None:
    ring = KeyRing.load(write(tmp_path, {"keys": [
        {"name": "mon", "key": "k" * 20, "roles": "classify"},
        {"name": "rev", "sha256": digest("r" * 20), "roles": ["review"]},
        {"name": "ops", "key": "a" * 20, "roles": ["admin"]},
    ]}))
    assert ring.enabled and len(ring) == 3
    assert ring.authorize("k" * 20, "classify").name == "mon"
    assert ring.authorize("r" * 20, "review").name == "rev"
    assert ring.authorize("a" * 20, "review").name == "ops" and ring.authorize("a" * 20, "classify").name == "ops"
    with pytest.raises(AuthFailure) as e:
        ring.authorize("k" * 20, "review")
    assert e.value.status == 403 and "mon" in e.value.message
    for bad in (None, "", "x" * 20):
        with pytest.raises(AuthFailure) as e:
            ring.authorize(bad, "classify")
        assert e.value.status == 401


def test_no_keys_means_open() -> None:
    ring = KeyRing.load(None)
    assert not ring.enabled
    assert ring.authorize(None, "review").may("admin")


@pytest.mark.parametrize(("content", "needle"), [
    ("keys: [", "not valid YAML"),
    ({"keys": []}, "empty"),
    ({"keys": [{"name": "a", "key": "short", "roles": ["classify"]}]}, "keys.0.key"),
    ({"keys": [{"name": "a", "key": "k" * 20, "roles": ["superuser"]}]}, "roles"),
    ({"keys": [{"name": "a", "key": "k" * 20}]}, "roles"),
    ({"keys": [{"name": "a", "key": "k" * 20, "sha256": "0" * 64, "roles": ["admin"]}]}, "exactly one"),
    ({"keys": [{"name": "a", "key": "k" * 20, "roles": ["admin"]},
               {"name": "b", "key": "k" * 20, "roles": ["review"]}]}, "repeats"),
    ({"users": []}, "keys"),
])
def test_bad_keys_files_are_one_line(tmp_path: Path, content: object, needle: str) -> None:
    with pytest.raises(KeysFileError) as e:
        KeyRing.load(write(tmp_path, content))
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_missing_keys_file(tmp_path: Path) -> None:
    with pytest.raises(KeysFileError, match="not found"):
        KeyRing.load(tmp_path / "nope.yaml")


def test_presented_key() -> None:
    assert presented_key("Bearer abc", None) == "abc"
    assert presented_key("bearer   abc  ", None) == "abc"
    assert presented_key("Basic abc", None) is None
    assert presented_key("Bearer ", None) is None
    assert presented_key("Bearer a", " b ") == "b"
    assert presented_key(None, None) is None


SERVING = Path(__file__).resolve().parents[2] / "serving"


def test_serving_config_owns_every_shenhe_variable_the_service_reads() -> None:
    """In serving/, only config.py reads the environment, and every SHENHE_* name serving/ mentions (help
    texts, messages, docs) is a ServingConfig variable."""
    import re

    from shenhe.serving.config import _ENV_ALIASES, _ENV_FIELDS

    read = re.compile(r"os\.environ\.get\(|os\.environ\[|os\.getenv\(|\benviron\.get\(")
    readers = [p.name for p in sorted(SERVING.glob("*.py")) if p.name != "config.py"
               and read.search(p.read_text(encoding="utf-8"))]
    assert readers == []
    mentioned = {name for p in SERVING.glob("*.py") for name in re.findall(r"SHENHE_[A-Z_]+", p.read_text(encoding="utf-8"))}
    known = set(_ENV_FIELDS.values()) | {alias for names in _ENV_ALIASES.values() for alias in names}
    assert mentioned - {"SHENHE_"} <= known, mentioned - known


def test_predictor_settings_come_from_the_config(tiny_bundle: Path) -> None:
    from shenhe.serving.runtime import load_predictor

    config = ServingConfig.from_env({"SHENHE_BUNDLE": str(tiny_bundle), "SHENHE_ORT_SPINNING": "0",
                                     "SHENHE_ORT_THREADS": "1"})
    assert config.bundle_dir == tiny_bundle and not config.ort_spinning
    assert ServingConfig.from_env({}).bundle_dir.name == "default"
    predictor = load_predictor(config)
    options = predictor.session.get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert options.intra_op_num_threads == 1 and predictor.bundle.dir == tiny_bundle
