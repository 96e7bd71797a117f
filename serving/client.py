"""A small client for the shenhe API, and a file streamer for monitors (``shenhe classify --url``).

    from shenhe.serving.client import ShenheClient

    with ShenheClient("http://127.0.0.1:3000", api_key="...") as client:
        result = client.classify(["今天天气很好", {"id": "post-17", "text": "你这个傻逼"}])
        for item in result["items"]:
            print(item["id"], item["decision"], item["categories"], item["review_id"])

Retries: connection errors, timeouts and HTTP 429/502/503/504 are retried with exponential backoff
(``Retry-After`` honoured). Retrying a classify request is safe: the server stores a review item once
per ``(id, text)`` and answers a retry with the same ``review_id``. Other errors raise
:class:`ShenheError` with the server's ``error`` code and message.
"""

from __future__ import annotations

import random
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from shenhe.models.errors import UserError
from shenhe.models.jsonl import JsonlError, atomic_jsonl, count_records, iter_text_records
from shenhe.serving.config import MAX_ITEMS

RETRY_STATUS = frozenset({429, 502, 503, 504})


class ShenheError(UserError):
    """An API call that failed; ``str(err)`` is one line. ``status`` is None for connection failures."""

    def __init__(self, message: str, status: int | None = None, code: str | None = None,
                 request_id: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.request_id = request_id


class InputFileError(UserError):
    """A line of the input file that cannot be sent (not JSON, no text...)."""


class ShenheClient:
    def __init__(self, url: str = "http://127.0.0.1:3000", api_key: str | None = None, *, timeout: float = 60.0,
                 retries: int = 5, backoff: float = 0.5, transport: httpx.BaseTransport | None = None) -> None:
        headers = {"User-Agent": "shenhe-client/1"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self.url = url.rstrip("/")
        self.retries = retries
        self.backoff = backoff
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout, transport=transport)

    def __enter__(self) -> ShenheClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # ---- transport with retries -----------------------------------------------------------------

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        last: str = ""
        for attempt in range(self.retries + 1):
            try:
                resp = self._http.request(method, path, **kwargs)
            except httpx.TransportError as e:  # refused, reset, timed out: the server may be restarting
                last = f"{method} {self.url}{path}: {e.__class__.__name__} {e}".strip()
                resp = None
            if resp is not None:
                if resp.status_code not in RETRY_STATUS:
                    return resp
                last = f"{method} {self.url}{path}: HTTP {resp.status_code} {_error_text(resp)}"
            if attempt == self.retries:
                break
            time.sleep(self._delay(attempt, resp))
        status = resp.status_code if resp is not None else None
        raise ShenheError(f"{last} (gave up after {self.retries + 1} attempts)", status=status)

    def _delay(self, attempt: int, resp: httpx.Response | None) -> float:
        if resp is not None:
            after = resp.headers.get("retry-after", "")
            if after.isdigit():
                return min(float(after), 30.0)
        return min(self.backoff * 2 ** attempt, 10.0) * (0.5 + random.random())

    def _json(self, resp: httpx.Response) -> Any:
        if resp.status_code >= 400:
            try:
                body = resp.json()
            except ValueError:
                body = {}
            code = body.get("error") if isinstance(body, dict) else None
            raise ShenheError(f"HTTP {resp.status_code} {_error_text(resp)}", status=resp.status_code, code=code,
                              request_id=resp.headers.get("x-request-id"))
        return resp.json() if resp.content else None

    # ---- API ------------------------------------------------------------------------------------

    def classify(self, items: Sequence[str | dict[str, Any]]) -> dict[str, Any]:
        """Classify texts (strings, or ``{"id", "text"}`` dicts); more than ``MAX_ITEMS`` (256) are sent in several
        requests and the answers joined (``request_id`` is then the last request's)."""
        payload = [{"text": i} if isinstance(i, str) else dict(i) for i in items]
        if not payload:
            raise ShenheError("nothing to classify: give at least one text")
        merged: dict[str, Any] = {}
        for start in range(0, len(payload), MAX_ITEMS):
            answer = self.classify_batch(payload[start:start + MAX_ITEMS])
            if merged:
                merged["items"].extend(answer["items"])
                merged["request_id"] = answer["request_id"]
            else:
                merged = answer
        return merged

    def classify_batch(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        """One ``POST /v1/classify`` with 1 to ``MAX_ITEMS`` (256) items."""
        return self._json(self._request("POST", "/v1/classify", json={"items": items}))

    def next_review(self, lease_seconds: int | None = None) -> dict[str, Any] | None:
        """Claim the oldest open review item (None when the queue is empty)."""
        params = {"lease_seconds": lease_seconds} if lease_seconds else None
        return self._json(self._request("GET", "/v1/review/next", params=params))

    def decide(self, review_id: str, labels: dict[str, bool] | Sequence[str], reviewer: str,
               note: str | None = None, lease_token: str | None = None) -> dict[str, Any]:
        """Record a decision; ``labels`` is a slug->bool map or the list of confirmed slugs."""
        label_map = dict(labels) if isinstance(labels, dict) else {slug: True for slug in labels}
        body: dict[str, Any] = {"labels": label_map, "reviewer": reviewer}
        if note is not None:
            body["note"] = note
        if lease_token is not None:
            body["lease_token"] = lease_token
        return self._json(self._request("POST", f"/v1/review/{review_id}", json=body))

    def review_stats(self) -> dict[str, Any]:
        return self._json(self._request("GET", "/v1/review/stats"))

    def ready(self) -> bool:
        try:
            return self._http.get("/readyz").status_code == 200
        except httpx.TransportError:
            return False


def _error_text(resp: httpx.Response) -> str:
    try:
        body = resp.json()
        if isinstance(body, dict) and "error" in body:
            return f"{body['error']}: {body.get('message', '')}".strip()
    except ValueError:
        pass
    return resp.text[:200].strip()


# ---- files ---------------------------------------------------------------------------------------


@dataclass
class ClassifySummary:
    items: int = 0
    decisions: Counter[str] = field(default_factory=Counter)
    errors: int = 0  # items the server refused (written to the output with "error")
    requests: int = 0
    seconds: float = 0.0

    @property
    def items_per_second(self) -> float:
        return self.items / self.seconds if self.seconds else 0.0


def _read_items(path: Path, text_field: str, id_field: str) -> Iterator[tuple[int, dict[str, Any]]]:
    try:
        for lineno, obj in iter_text_records(path, text_field):
            item: dict[str, Any] = {"text": obj[text_field]}
            if obj.get(id_field) is not None:
                item["id"] = str(obj[id_field])
            yield lineno, item
    except JsonlError as e:
        raise InputFileError(str(e)) from None


def classify_file(url: str, input_path: str | Path, output_path: str | Path, api_key: str | None = None,
                  batch_size: int = 64, *, text_field: str = "text", id_field: str = "id", retries: int = 5,
                  timeout: float = 60.0, progress: bool = True, transport: httpx.BaseTransport | None = None,
                  ) -> ClassifySummary:
    """Stream a JSONL file through ``POST /v1/classify``.

    Input: one JSON object per line with ``text`` (and optionally ``id``), or a JSON string. Output:
    one line per input item, in order: ``{"line", "id", "decision", "scores", "categories", "reasons",
    "matches", "review_id", "model", "policy_version", "request_id"}``; an item the server refuses (a
    text over its size cap, say) gets ``{"line", "id", "error", "message"}`` and the run goes on.
    """
    from tqdm import tqdm

    if not 1 <= batch_size <= MAX_ITEMS:
        raise ShenheError(f"batch size must be 1..{MAX_ITEMS}, got {batch_size}")
    src, dst = Path(input_path), Path(output_path)
    if not src.is_file():
        raise InputFileError(f"{src}: input file not found")
    summary = ClassifySummary()
    started = time.perf_counter()
    bar = tqdm(total=count_records(src), unit="text", desc="classify", disable=not progress, dynamic_ncols=True)
    with ShenheClient(url, api_key, timeout=timeout, retries=retries, transport=transport) as client, \
            atomic_jsonl(dst) as out:  # a complete file or none (a run that gives up leaves no partial output)
        batch: list[tuple[int, dict[str, Any]]] = []

        def flush() -> None:
            for record in _send(client, batch, summary):
                out.write(record)
            out.flush()
            bar.update(len(batch))
            batch.clear()

        for lineno, item in _read_items(src, text_field, id_field):
            batch.append((lineno, item))
            if len(batch) == batch_size:
                flush()
        if batch:
            flush()
    bar.close()
    summary.seconds = time.perf_counter() - started
    if progress:
        counts = ", ".join(f"{d} {summary.decisions[d]}" for d in ("pass", "review", "block"))
        refused = f"; {summary.errors} refused (see 'error' in the output)" if summary.errors else ""
        print(f"classified {summary.items} item(s) in {summary.seconds:.1f} s ({counts}){refused} -> {dst}",
              file=sys.stderr)
    return summary


def _send(client: ShenheClient, batch: list[tuple[int, dict[str, Any]]], summary: ClassifySummary
          ) -> list[dict[str, Any]]:
    try:
        answer = client.classify_batch([item for _, item in batch])
        summary.requests += 1
    except ShenheError as e:
        if e.status != 400 or len(batch) == 1:
            if e.status == 400:  # this one item is refused: record it and go on
                lineno, item = batch[0]
                summary.errors += 1
                summary.items += 1
                return [{"line": lineno, "id": item.get("id"), "error": e.code or "invalid", "message": str(e)}]
            raise
        # One bad item fails the whole request: send them one by one to isolate it.
        records: list[dict[str, Any]] = []
        for one in batch:
            records.extend(_send(client, [one], summary))
        return records
    records = []
    for (lineno, _), result in zip(batch, answer["items"], strict=True):
        summary.items += 1
        summary.decisions[result["decision"]] += 1
        records.append({"line": lineno, **result, "model": answer["model"],
                        "policy_version": answer["policy_version"], "request_id": answer["request_id"]})
    return records
