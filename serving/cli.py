"""`shenhe serve` and `shenhe review export`. Only light imports here: BentoML, onnxruntime and
SQLAlchemy load inside the commands."""

from __future__ import annotations

import ipaddress
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from shenhe.models.errors import UserError, cli_errors

review_app = typer.Typer(help="The human-review queue: export reviewer decisions for retraining.",
                         no_args_is_help=True)

LOOPBACK = "127.0.0.1"
SERVICE = "shenhe.serving.service:Shenhe"


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _config(**overrides: object):  # -> ServingConfig (typed import stays inside)
    from shenhe.serving.config import ConfigError, ServingConfig

    try:
        return ServingConfig.from_env(**overrides)
    except ConfigError as e:
        raise UserError(str(e)) from None


def serve(
    bundle: Annotated[Path | None, typer.Option("--bundle", help="Bundle directory (default: $SHENHE_BUNDLE, else models/default).")] = None,
    port: Annotated[int | None, typer.Option("--port", help="TCP port (default 3000 or $SHENHE_PORT).")] = None,
    host: Annotated[str | None, typer.Option("--host", help="Address to bind (default 0.0.0.0 with API keys, else 127.0.0.1).")] = None,
    workers: Annotated[int | None, typer.Option("--workers", help="Worker processes, each with its own model copy (default 1).")] = None,
    keys: Annotated[Path | None, typer.Option("--keys", help="API keys YAML file (default $SHENHE_KEYS_FILE; none = loopback only).")] = None,
    db_url: Annotated[str | None, typer.Option("--db-url", help="SQLAlchemy URL of the review queue (default $SHENHE_DB_URL, else sqlite:///var/shenhe.db).")] = None,
    policy: Annotated[Path | None, typer.Option("--policy", help="Operator policy YAML replacing the bundle's (default $SHENHE_POLICY).")] = None,
    max_text_chars: Annotated[int | None, typer.Option("--max-text-chars", help="Hard cap per text (default 20000).")] = None,
    log_texts: Annotated[bool, typer.Option("--log-texts", help="Also write texts to the logs (off by default).")] = False,
    request_timeout: Annotated[float | None, typer.Option("--request-timeout", help="Seconds a request may wait for the model before a 504 (default 30 or $SHENHE_REQUEST_TIMEOUT_S).")] = None,
    reload_interval: Annotated[float | None, typer.Option("--reload-interval", help="Seconds between checks of the bundle and policy files for a hot reload; 0 = no watching (default 2 or $SHENHE_RELOAD_INTERVAL_S).")] = None,
    max_request_tokens: Annotated[int | None, typer.Option("--max-request-tokens", help="Model tokens one request may use (default 32768 or $SHENHE_MAX_REQUEST_TOKENS).")] = None,
) -> None:
    """Start the HTTP API (BentoML) on a bundle, with the review queue."""
    _serve(bundle=bundle, port=port, host=host, workers=workers, keys=keys, db_url=db_url, policy=policy,
           max_text_chars=max_text_chars, log_texts=log_texts or None, request_timeout_s=request_timeout,
           reload_interval_s=reload_interval,
           max_request_tokens=max_request_tokens)


@cli_errors()
def _serve(**options: object) -> None:
    from shenhe.models.bundle import BundleError, check_policy_fits, load_bundle
    from shenhe.models.policy import PolicyError, load_policy
    from shenhe.serving.auth import KeyRing, KeysFileError

    config = _config(keys_file=options.pop("keys"), **options)
    try:
        keyring = KeyRing.load(config.keys_file)
    except KeysFileError as e:
        raise UserError(str(e)) from None

    host = config.host
    if keyring.enabled:
        host = host or "0.0.0.0"
        note = f"{len(keyring)} API key(s) configured; listening on {host}"
    else:
        if host and not _is_loopback(host):
            raise UserError(f"refusing to listen on {host} without API keys: give --keys FILE "
                            f"(or SHENHE_KEYS_FILE), or use --host {LOOPBACK}")
        host = host or LOOPBACK
        note = f"no API keys configured: listening on {host} only (give --keys FILE to serve other hosts)"

    try:  # fail here with one line rather than in every worker
        bundle = load_bundle(config.bundle_dir)
        if config.policy is not None:
            check_policy_fits(load_policy(config.policy), bundle.manifest, str(config.policy))
    except (BundleError, PolicyError) as e:
        raise UserError(str(e)) from None

    db_url = config.db_url
    from shenhe.serving.queue import ReviewStore

    try:
        store = ReviewStore(db_url)
    except Exception as e:  # an unknown dialect or a malformed URL
        raise UserError(f"cannot use the review database URL: {str(e).splitlines()[0][:200]}") from None
    try:
        store.create_schema()
    except Exception as e:  # any driver error: report it in one line
        raise UserError(f"cannot open the review database {store.describe()}: {str(e).splitlines()[0][:200]}") from None
    finally:
        store.close()

    env = config.model_copy(update={"host": host, "bundle": bundle.dir.resolve()}).to_env()
    os.environ.update(env)
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")  # no usage reporting; the machine may be offline
    print(f"shenhe: bundle {bundle.manifest.name} {bundle.manifest.version} ({bundle.dir}); "
          f"review queue {store.describe()}", file=sys.stderr)
    print(f"shenhe: {note}; http://{host}:{config.port}/v1/docs", file=sys.stderr, flush=True)
    if config.allowed_hosts is None and not _is_loopback(host):
        print("shenhe: only loopback Host names are answered; set SHENHE_ALLOWED_HOSTS to the names clients "
              "use (see the README)", file=sys.stderr, flush=True)

    # What `bentoml serve shenhe.serving.service:Shenhe` does, with our host/port/timeout.
    from _bentoml_impl.server import serve_http
    from bentoml._internal.log import configure_server_logging
    from bentoml._internal.service.loader import load

    configure_server_logging()
    import shenhe

    root = str(Path(shenhe.__file__).resolve().parent.parent)  # the directory holding the shenhe package
    if sys.path[0] != root:
        sys.path.insert(0, root)
    load(SERVICE, working_dir=root).inject_config()
    from shenhe.serving.config import bentoml_timeout

    serve_http(SERVICE, working_dir=root, host=host, port=config.port, timeout=bentoml_timeout(config))


@review_app.command("export")
@cli_errors()
def review_export(
    out: Annotated[Path, typer.Option("--out", help="Output JSONL file (corpus format).")],
    db_url: Annotated[str | None, typer.Option("--db-url", help="Review queue URL (default $SHENHE_DB_URL, else sqlite:///var/shenhe.db).")] = None,
    since: Annotated[str | None, typer.Option("--since", help="Only items decided at or after this ISO 8601 time (UTC unless it names a zone), for incremental retraining.")] = None,
) -> None:
    """Write decided review items as corpus records {"id","text","labels","source":"review"}."""
    from sqlalchemy.exc import SQLAlchemyError

    from shenhe.models.jsonl import atomic_jsonl
    from shenhe.serving.queue import ReviewStore
    from shenhe.serving.reviews import ReviewSourceError, parse_since

    try:
        since_at = parse_since(since) if since is not None else None
    except ReviewSourceError as e:
        raise UserError(str(e)) from None
    config = _config(db_url=db_url)
    try:
        store = ReviewStore(config.db_url)
    except SQLAlchemyError as e:
        raise UserError(f"cannot use the review database URL: {str(e).splitlines()[0][:200]}") from None
    n = 0
    try:
        if store.backend == "sqlite" and not _sqlite_file_exists(config.db_url):
            raise UserError(f"no review database at {store.describe()} (start the service first, or give --db-url)")
        with atomic_jsonl(out) as f:
            for record in store.iter_decided(since=since_at):
                f.write(record)
            n = f.written
    except SQLAlchemyError as e:
        raise UserError(f"cannot read the review database {store.describe()}: {str(e).splitlines()[0][:200]}") from None
    finally:
        store.close()
    print(f"wrote {n} decided item(s) to {out}" + (f" (decided since {since_at.isoformat()})" if since_at else ""),
          file=sys.stderr)


def _sqlite_file_exists(url: str) -> bool:
    from sqlalchemy.engine import make_url

    db = make_url(url).database
    return not db or db == ":memory:" or Path(db).is_file()


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
    app.add_typer(review_app, name="review")
