"""The BentoML service: ``bentoml serve serving.service:Shenhe`` (``shenhe serve`` wraps it).

One instance per worker process loads the bundle through ``models.predictor`` (onnxruntime; never
torch), opens the review store and serves the ``/v1`` FastAPI app (serving/api.py). BentoML provides
the process model (``--workers``), ``/healthz`` (``/livez``), ``/readyz`` (bundle loaded and database
reachable, via ``__is_ready__``) and ``/metrics`` (BentoML's metrics plus ours, and the queue depth
read at scrape time via ``__metrics__``).

Settings come from ``SHENHE_*`` environment variables (serving/config.py).
"""

from __future__ import annotations

import bentoml

from serving.api import app as api_app
from serving.config import ConfigError, ServingConfig, bentoml_timeout
from serving.logging import configure_logging


def _config_or_default() -> ServingConfig:
    """The settings at import time (`shenhe serve` validated them already; bad values fail in the worker)."""
    try:
        return ServingConfig.from_env()
    except ConfigError:
        return ServingConfig()


_CONFIG = _config_or_default()


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
        from serving.runtime import Runtime

        configure_logging()
        self.runtime = Runtime.start(ServingConfig.from_env())
        api_app.state.runtime = self.runtime

    def __is_ready__(self) -> bool:
        """Ready = the bundle is loaded (it is, or this object would not exist) and the database answers."""
        return self.runtime.ready()

    def __metrics__(self, content: str) -> str:
        return content + self.runtime.queue_metrics_text()

    @bentoml.on_shutdown
    def _close(self) -> None:
        self.runtime.close()
