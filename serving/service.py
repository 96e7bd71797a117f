"""The BentoML service: ``bentoml serve serving.service:Shenhe`` (``shenhe serve`` wraps it).

One instance per worker process loads the bundle through ``models.predictor`` (onnxruntime; never
torch), opens the review store and serves the ``/v1`` FastAPI app (serving/api.py) and one BentoML-native
endpoint, ``classify`` (``POST /classify``, serving/native.py: what BentoML's clients and API schema see;
it answers like ``POST /v1/classify``). BentoML provides
the process model (``--workers``), ``/healthz`` (``/livez``), ``/readyz`` (bundle loaded and database
reachable, via ``__is_ready__``) and ``/metrics`` (BentoML's metrics plus ours, the queue depth and
the live precision read at scrape time via ``__metrics__``). serving/hardening.py sits in front of all
of it (Host, Origin, JSON-only bodies, the ``metrics`` role).

Settings come from ``SHENHE_*`` environment variables (serving/config.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import bentoml

from shenhe.serving.api import app as api_app
from shenhe.serving.config import ConfigError, ServingConfig, bentoml_timeout
from shenhe.serving.hardening import HardeningMiddleware
from shenhe.serving.logging import configure_logging
from shenhe.serving.native import ClassifyItems, NativeApiGuard, classify_native
from shenhe.serving.schemas import ClassifyResponse

if TYPE_CHECKING:
    from shenhe.serving.runtime import Runtime


def _config_or_default() -> ServingConfig:
    """The settings at import time (`shenhe serve` validated them already; bad values fail in the worker)."""
    try:
        return ServingConfig.from_env()
    except ConfigError:
        return ServingConfig()


_CONFIG = _config_or_default()


def _live_precision_text(runtime: Runtime) -> str:
    from shenhe.serving.live_precision import for_runtime, metrics_text

    try:
        return metrics_text(for_runtime(runtime).report())
    except Exception:  # a scrape must not fail because the database is briefly away
        return "# shenhe_live_precision unavailable: database unreachable\n"


def _reload_on_sighup(runtime: object) -> None:
    """SIGHUP to a worker process reloads its bundle and policy (serving/reload.py), off the signal handler."""
    import signal
    import threading

    from shenhe.serving.logging import log_event

    reloader = getattr(runtime, "reloader", None)
    if reloader is None or not hasattr(signal, "SIGHUP"):
        return

    def on_hup(_signum: int, _frame: object) -> None:
        threading.Thread(target=reloader.reload, args=("sighup",), name="shenhe-sighup", daemon=True).start()

    try:
        signal.signal(signal.SIGHUP, on_hup)
    except ValueError:  # not the main thread: the file watcher and POST /v1/admin/reload still work
        log_event(reloader.runtime.logger, "SIGHUP reload unavailable (worker not on the main thread)")


@bentoml.service(
    name="shenhe",
    workers=_CONFIG.workers,
    traffic={"timeout": bentoml_timeout(_CONFIG)},
    # Our own JSON request log (with the request id, without client addresses) replaces the access log.
    logging={"access": {"enabled": False}},
)
@bentoml.asgi_app(api_app, path="/", name="shenhe-v1")
class Shenhe:
    def __init__(self) -> None:
        from shenhe.serving.runtime import Runtime

        configure_logging()
        self.runtime = Runtime.start(ServingConfig.from_env())
        api_app.state.runtime = self.runtime
        _reload_on_sighup(self.runtime)

    def __is_ready__(self) -> bool:
        """Ready = the bundle is loaded (it is, or this object would not exist) and the database answers."""
        return self.runtime.ready()

    def __metrics__(self, content: str) -> str:
        return content + self.runtime.queue_metrics_text() + _live_precision_text(self.runtime)

    @bentoml.api(route="/classify")
    async def classify(self, items: ClassifyItems, ctx: bentoml.Context) -> ClassifyResponse:
        """Classify 1 to 256 texts: the same request, answer, API key role (classify), batching and review-queue
        write as POST /v1/classify."""
        status, response = await classify_native(ctx.request, items)
        ctx.response.status_code = status  # BentoML answers with the context's status
        return response  # type: ignore[return-value]  # a finished Response: BentoML sends it as it is

    @bentoml.on_shutdown
    def _close(self) -> None:
        self.runtime.close()


# Host / Origin / content-type checks and the /metrics key, in front of every route (serving/hardening.py);
# then, for the BentoML-native routes, the /v1 request context, keys and validation (serving/native.py).
# (type: ignore below: a bentoml Service; mypy drops class decorators' types, mypy#3135)
Shenhe.add_asgi_middleware(HardeningMiddleware)  # type: ignore[attr-defined]
Shenhe.add_asgi_middleware(NativeApiGuard)  # type: ignore[attr-defined]
