"""The review console in a real browser: Playwright for Python driving the system Chromium against a
live ``shenhe serve`` (the session's SQLite server). Skipped only when Chromium or Playwright is absent.

Set SHENHE_SCREENSHOTS=DIR to keep the screenshots (docs/images holds the README's copies)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from shenhe.serving.queue import ReviewStore
from tests.conftest import present
from tests.serving.conftest import KEYS, ServerProcess, auth
from tests.serving.test_console import seed_block_audits

pytestmark = pytest.mark.integration

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
if CHROMIUM is None:
    pytest.skip("chromium is not installed (.ci/run installs it)", allow_module_level=True)

ARGS = ["--no-sandbox", "--disable-background-networking", "--disable-component-update", "--no-first-run",
        "--disable-dev-shm-usage"]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser: Any, sqlite_server: ServerProcess) -> Iterator[Any]:
    ctx = browser.new_context(viewport={"width": 1280, "height": 900}, locale="zh-CN")
    pg = ctx.new_page()
    pg.set_default_timeout(30_000)
    outside: list[str] = []

    def only_the_server(route: Any) -> None:  # no network but the service itself
        if route.request.url.startswith(sqlite_server.url):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    pg.route("**/*", only_the_server)
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    yield pg
    ctx.close()
    assert not errors, errors
    assert not outside, f"the page tried to load from outside the service: {outside}"


def shot(pg: Any, name: str, tmp_path: Path) -> None:
    path = tmp_path / name
    pg.screenshot(path=str(path))
    keep = os.environ.get("SHENHE_SCREENSHOTS")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(keep) / name)


def sign_in(pg: Any, server: ServerProcess, key: str) -> None:
    pg.goto(f"{server.url}/review")
    pg.get_by_label("API 密钥").fill(key)
    pg.get_by_role("button", name="登录").click()
    pg.wait_for_selector("#claim-next")


def test_reviewer_flow_claim_label_undo_export(page: Any, sqlite_server: ServerProcess, tmp_path: Path) -> None:
    server = sqlite_server
    text = f"你这个傻逼，滚出去！别再来这个群里发广告了。#{uuid.uuid4().hex[:6]}"
    caller = f"browser-{uuid.uuid4().hex[:8]}"
    r = httpx.post(f"{server.url}/v1/classify", headers=auth("classify"), json={"items": [{"id": caller, "text": text}]})
    rid = r.json()["items"][0]["review_id"]
    assert rid

    page.goto(f"{server.url}/review")
    assert page.locator("h1").inner_text() == "登录审核台"
    page.get_by_label("API 密钥").fill("not-a-key-0123456789")
    page.get_by_role("button", name="登录").click()
    page.wait_for_selector("#login-error:not([hidden])")
    assert "unauthorized" in page.locator("#login-error").inner_text()
    sign_in(page, server, KEYS["review2"])  # key "bob"
    assert page.locator("#user-name").inner_text() == "bob"
    cookies = page.context.cookies()
    session = next(c for c in cookies if c["name"] == "shenhe_session")
    assert session["httpOnly"] and session["sameSite"] == "Strict"

    page.select_option("#filter-order", "newest")
    page.locator("body").click()
    page.keyboard.press("n")
    page.wait_for_selector("#item:not([hidden])")
    assert page.locator("#item-text").inner_text() == text
    term = page.locator("#item-text mark.hl-term").first
    assert term.inner_text() == "傻逼" and "insult_defamation" in (term.get_attribute("data-categories") or "")
    assert caller in page.locator("#item-meta").inner_text() and rid in page.locator("#item-meta").inner_text()
    assert page.locator("#scores-body tr").count() == 9
    assert ":" in page.locator("#lease-countdown").inner_text()
    shot(page, "console-reviewer.png", tmp_path)

    page.keyboard.press("Enter")  # nothing chosen yet: refused on the page
    assert "请先选择" in page.locator("#status").inner_text()
    page.keyboard.press("8")  # insult_defamation
    assert page.locator('input[value="insult_defamation"]').is_checked()
    page.locator("#note").fill("粗口")
    page.keyboard.press("Escape")
    page.keyboard.press("Enter")
    sync_api.expect(page.locator("#status")).to_contain_text("已提交")
    store = ReviewStore(str(server.extra["db_url"]))
    try:
        row = present(store.get(rid))
        assert row["state"] == "decided" and row["labels"] == ["insult_defamation"] and row["reviewer"] == "bob"
        assert row["note"] == "粗口"

        page.keyboard.press("u")  # right away: it waits for the next claim in flight
        sync_api.expect(page.locator("#status")).to_contain_text("已撤销")
        assert page.locator("#item-text").inner_text() == text
        assert page.locator('input[value="insult_defamation"]').is_checked()  # the labels come back
        assert present(store.get(rid))["state"] == "open"
        page.keyboard.press("8")
        page.keyboard.press("6")  # rumor
        page.keyboard.press("Enter")
        sync_api.expect(page.locator("#status")).to_contain_text("已提交")
        assert present(store.get(rid))["labels"] == ["rumor"]
        actions = [a["action"] for a in store.audit_log(review_id=rid)][::-1]
        assert actions[-4:] == ["claim", "decide", "undo", "decide"]
    finally:
        store.close()

    out = tmp_path / "export.jsonl"
    proc = subprocess.run([sys.executable, "-m", "shenhe.cli", "review", "export", "--out", str(out),
                           "--db-url", str(server.extra["db_url"])], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert {"id": f"review:{rid}", "text": text, "labels": ["rumor"], "source": "review"} in records


def test_skip_releases_the_item(page: Any, sqlite_server: ServerProcess) -> None:
    server = sqlite_server
    text = f"废物东西 {uuid.uuid4().hex[:6]}"
    rid = httpx.post(f"{server.url}/v1/classify", headers=auth("classify"),
                     json={"items": [{"id": "skip", "text": text}]}).json()["items"][0]["review_id"]
    sign_in(page, server, KEYS["review"])
    page.select_option("#filter-order", "newest")
    page.locator("#claim-next").click()
    page.wait_for_selector("#item:not([hidden])")
    assert page.locator("#item-text").inner_text() == text
    page.locator("body").click()
    page.keyboard.press("s")
    sync_api.expect(page.locator("#status")).to_contain_text("已跳过")
    sync_api.expect(page.locator("#status")).to_contain_text(re.compile("已领取|没有"))  # the next claim is done
    store = ReviewStore(str(server.extra["db_url"]))
    try:
        assert [a["action"] for a in store.audit_log(review_id=rid)][::-1][:2] == ["claim", "release"]
    finally:
        store.close()


def test_admin_page_shows_live_precision_and_flags_a_low_block_band(page: Any, sqlite_server: ServerProcess,
                                                                    tmp_path: Path) -> None:
    server = sqlite_server
    store = ReviewStore(str(server.extra["db_url"]))
    try:
        seed_block_audits(store, "rumor", confirmed=7, rejected=5)  # 58%: below the 95% target
        seed_block_audits(store, "obscene_violent", confirmed=20, rejected=0)
    finally:
        store.close()
    sign_in(page, server, KEYS["admin"])
    page.locator("#admin-link").click()
    page.wait_for_selector("#precision-table")
    row = page.locator('#precision-table tr[data-category="rumor"][data-band="block"]')
    assert "低于目标" in row.inner_text() and "58.3%" in row.inner_text()
    assert "flagged" in (row.get_attribute("class") or "")
    ok = page.locator('#precision-table tr[data-category="obscene_violent"][data-band="block"]')
    assert "正常" in ok.inner_text() and "flagged" not in (ok.get_attribute("class") or "")
    assert "rumor" in page.locator("#precision-alert").inner_text()
    assert page.locator("#audit-table tbody tr").count() > 0
    page.locator("#precision-alert").scroll_into_view_if_needed()
    shot(page, "console-admin.png", tmp_path)


def test_api_docs_render_with_no_network(page: Any, sqlite_server: ServerProcess) -> None:
    page.goto(f"{sqlite_server.url}/v1/docs")
    page.wait_for_selector(".swagger-ui .info .title")
    assert "shenhe" in page.locator(".swagger-ui .info .title").inner_text()
    page.wait_for_selector(".opblock-summary-path")
    paths = page.locator(".opblock-summary-path").all_inner_texts()
    assert any("/v1/classify" in p for p in paths) and len(paths) >= 4
