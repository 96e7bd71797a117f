"""Hot reload: a worker picks up a new bundle or policy on disk without a restart.

Each worker polls its bundle directory and policy file every ``SHENHE_RELOAD_INTERVAL_S`` seconds (and
reloads on ``POST /v1/admin/reload`` and on SIGHUP to the worker). A change is loaded beside what is
serving: the bundle's sha256 hashes are verified (``models.bundle.load_bundle``), the policy is parsed and
checked against the bundle, and a smoke prediction must succeed; only then is it swapped in
(:meth:`serving.runtime.Runtime.swap_predictor`). Requests already scoring finish on the model and policy
they started with; every response names the model and policy version it used. A file that fails any check
is refused with a ``reload refused`` log line and the previous bundle and policy keep serving; the same
broken file is not retried until it changes again.

Write policy files atomically (write a temporary file, then rename it over the old one) and replace
bundles with ``shenhe promote --target`` (a directory rename): a half-written file is refused, and the
complete one is then picked up at the next poll.
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from shenhe.models.bundle import MANIFEST_FILE, MODEL_FILE, POLICY_FILE, TOKENIZER_FILE
from shenhe.serving.logging import log_event

if TYPE_CHECKING:
    from shenhe.models.predictor import Predictor
    from shenhe.serving.runtime import Runtime

# Two fixed sentences every new bundle or policy must score before it serves (an everyday sentence and an
# insult: both must come back with finite scores in [0, 1] and a decision).
SMOKE_TEXTS = ("今天天气很好，我们下午去公园散步吧。", "你这个人真是个废物，滚出去。")
_STAT_FILES = (MANIFEST_FILE, MODEL_FILE, TOKENIZER_FILE, POLICY_FILE)

Outcome = Literal["reloaded", "unchanged", "refused"]


@dataclass(frozen=True)
class Fingerprint:
    """What the watched files look like: the bundle (its manifest's content and its files' identity,
    size and modification time) and the operator policy's content (None: the bundle's own policy)."""

    bundle: tuple[object, ...]
    policy: str | None


@dataclass(frozen=True)
class ReloadResult:
    status: Outcome
    trigger: str
    model_version: str
    policy_version: str
    reason: str | None = None
    changed: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {"status": self.status, "trigger": self.trigger, "model_version": self.model_version,
                "policy_version": self.policy_version, "reason": self.reason, "changed": list(self.changed)}


def _digest(path: Path) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError as e:
        return f"unreadable:{e.__class__.__name__}"


def smoke_test(predictor: Predictor) -> None:
    """Raise ValueError unless ``predictor`` scores the smoke sentences sensibly."""
    predictions = predictor.predict(list(SMOKE_TEXTS))
    if len(predictions) != len(SMOKE_TEXTS):
        raise ValueError(f"smoke prediction returned {len(predictions)} results for {len(SMOKE_TEXTS)} texts")
    for p in predictions:
        bad = [k for k, v in p.scores.items() if not (math.isfinite(v) and 0.0 <= v <= 1.0)]
        if bad:
            raise ValueError(f"smoke prediction gave invalid scores for {', '.join(bad)}")


class Reloader:
    """Watches one worker's bundle and policy; :meth:`reload` loads, checks and swaps (one at a time)."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.bundle_dir = runtime.config.bundle_dir
        self.policy_path = runtime.config.policy
        self.interval_s = runtime.config.reload_interval_s
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._loaded = self.fingerprint()  # what serves now
        self._tried = self._loaded  # the last files a reload was attempted on (a refused file: not again)

    def fingerprint(self) -> Fingerprint:
        parts: list[object] = [_digest(self.bundle_dir / MANIFEST_FILE)]
        for name in _STAT_FILES:
            try:
                st = (self.bundle_dir / name).stat()
                parts.append((name, st.st_ino, st.st_mtime_ns, st.st_size))
            except OSError:
                parts.append((name, None))
        policy = _digest(self.policy_path) if self.policy_path is not None else None
        return Fingerprint(tuple(parts), policy)

    # -- watching ------------------------------------------------------------------------------------

    def start(self) -> None:
        if self.interval_s <= 0 or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._watch, name="shenhe-reload", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _watch(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                if self.fingerprint() != self._tried:
                    self.reload("watch")
            except Exception:  # the watcher must outlive any surprise; the old model keeps serving
                self.runtime.logger.exception("reload watcher error")

    # -- reloading -----------------------------------------------------------------------------------

    def reload(self, trigger: str) -> ReloadResult:
        """Load whatever changed on disk since the serving bundle/policy were loaded, check it, swap it in."""
        from shenhe.models.policy import load_policy
        from shenhe.serving.runtime import load_predictor

        with self._lock:
            runtime = self.runtime
            current = runtime.predictor
            fp = self.fingerprint()
            self._tried = fp
            changed = tuple(name for name, differs in (("bundle", fp.bundle != self._loaded.bundle),
                                                       ("policy", fp.policy != self._loaded.policy)) if differs)
            if not changed:
                return ReloadResult("unchanged", trigger, current.info.version, current.policy.version)
            started = time.monotonic()
            try:
                if "bundle" in changed:
                    new = load_predictor(runtime.config, self.policy_path)
                else:
                    assert self.policy_path is not None
                    new = current.with_policy(load_policy(self.policy_path))
                smoke_test(new)
            except Exception as e:
                reason = str(e).splitlines()[0][:500] if str(e) else e.__class__.__name__
                log_event(runtime.logger, "reload refused", logging.ERROR, trigger=trigger, changed=list(changed),
                          reason=reason, bundle=str(self.bundle_dir), policy=str(self.policy_path or ""),
                          serving_model_version=current.info.version, serving_policy_version=current.policy.version)
                return ReloadResult("refused", trigger, current.info.version, current.policy.version, reason, changed)
            runtime.swap_predictor(new)
            self._loaded = fp
            log_event(runtime.logger, "reloaded", trigger=trigger, changed=list(changed),
                      model=new.info.name, model_version=new.info.version, policy_version=new.policy.version,
                      previous_model_version=current.info.version, previous_policy_version=current.policy.version,
                      load_ms=round((time.monotonic() - started) * 1000))
            return ReloadResult("reloaded", trigger, new.info.version, new.policy.version, None, changed)
