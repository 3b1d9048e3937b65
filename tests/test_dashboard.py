"""The dashboard in real headless Chromium (Debian's `chromium`, driven by Playwright through its
executable path), against a live server seeded with tests/usage_org.py, on both stores.

Screenshots of every page go to artifacts/dashboard/ (overview, tasks, task, member message,
each at 1280 px and 390 px wide).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from taskmeter.store import Store
from tests.factories import Factory
from tests.usage_org import Org, build_org

CHROMIUM = os.environ.get("TASKMETER_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts" / "dashboard"
RANGE = "from=2026-03-27&to=2026-03-31"

playwright_api = pytest.importorskip("playwright.sync_api")
if not shutil.which(CHROMIUM) and not Path(CHROMIUM).exists():
    pytest.fail(
        f"no Chromium at {CHROMIUM}: .ci/run installs Debian's chromium package", pytrace=False
    )


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    with playwright_api.sync_playwright() as pw:
        chromium = pw.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        yield chromium
        chromium.close()


@pytest.fixture
def org(live_server: str, factory: Factory) -> Org:
    with httpx.Client(base_url=live_server) as client:
        return build_org(client, factory)  # type: ignore[arg-type]


def open_page(browser: object, width: int = 1280) -> object:
    context = browser.new_context(  # type: ignore[attr-defined]
        viewport={"width": width, "height": 900}, timezone_id="Europe/Berlin"
    )
    return context.new_page()


def sign_in(page: object, base: str, key: str) -> None:
    page.goto(base + "/")  # type: ignore[attr-defined]
    page.get_by_label("API key").fill(key)  # type: ignore[attr-defined]
    page.get_by_role("button", name="Sign in").click()  # type: ignore[attr-defined]


def shot(page: object, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)  # type: ignore[attr-defined]


def test_overview_shows_the_seeded_totals(
    browser: object, live_server: str, org: Org, store: Store
) -> None:
    for width in (1280, 390):
        page = open_page(browser, width)
        sign_in(page, live_server, org.boss.key)
        page.wait_for_selector("#total-credits")  # type: ignore[attr-defined]
        page.goto(f"{live_server}/#/overview?{RANGE}&group_by=day")  # type: ignore[attr-defined]
        page.wait_for_selector("#credits-chart canvas")  # type: ignore[attr-defined]
        text = page.text_content  # type: ignore[attr-defined]
        assert text("#total-credits") == "0.0925"
        assert text("#total-tasks") == "3"
        assert "gpt-4o-mini" in text("#by-model") and "0.0700" in text("#by-model")
        assert "eve@acme.io" in text("#by-member")
        assert "completed" in text("#by-status") and "error" in text("#by-status")
        assert "Europe/Berlin" in text("main")
        shot(page, f"overview-{width}")
        # week and month switches redraw from the same API
        page.select_option("select[name=group_by]", "week")  # type: ignore[attr-defined]
        page.get_by_role("button", name="Apply").click()  # type: ignore[attr-defined]
        page.wait_for_url(lambda url: "group_by=week" in url)  # type: ignore[attr-defined]
        page.wait_for_selector("#credits-chart canvas")  # type: ignore[attr-defined]
        assert text("#total-credits") == "0.0925"
        page.context.close()  # type: ignore[attr-defined]


def test_tasks_filter_sort_and_the_task_page(browser: object, live_server: str, org: Org) -> None:
    page = open_page(browser)
    sign_in(page, live_server, org.boss.key)
    page.wait_for_selector("#total-credits")  # type: ignore[attr-defined]
    page.get_by_role("link", name="Tasks").click()  # type: ignore[attr-defined]
    page.goto(f"{live_server}/#/tasks?{RANGE}&sort=cost")  # type: ignore[attr-defined]
    page.wait_for_selector("#tasks-table tbody tr")  # type: ignore[attr-defined]
    ids = page.locator("#tasks-table tbody tr td:first-child").all_text_contents()  # type: ignore[attr-defined]
    assert ids == ["T-B", "T-A", "T-C"]
    assert page.text_content("#page-info") == "1–3 of 3"  # type: ignore[attr-defined]
    shot(page, "tasks-1280")
    page.select_option("select[name=status]", "error")  # type: ignore[attr-defined]
    page.get_by_role("button", name="Apply").click()  # type: ignore[attr-defined]
    # The page forbids eval (CSP), so waits go through locators, not page-side functions.
    playwright_api.expect(page.locator("#tasks-table tbody tr")).to_have_count(1)  # type: ignore[attr-defined]
    page.get_by_role("link", name="T-A").click()  # type: ignore[attr-defined]
    page.wait_for_selector("#timeline li")  # type: ignore[attr-defined]
    assert page.locator("#timeline li").count() == 3  # type: ignore[attr-defined]
    assert page.text_content("#task-credits") == "0.0560"  # type: ignore[attr-defined]
    assert page.text_content("#task-streams") == "2"  # type: ignore[attr-defined]
    assert page.locator("#streams-table tbody tr").count() == 2  # type: ignore[attr-defined]
    assert "nuclei" in page.text_content("#tool-breakdown")  # type: ignore[attr-defined]
    shot(page, "task-1280")
    # Keyboard: focus moves to the content on each view; Tab then Enter follows its first link.
    page.keyboard.press("Tab")  # type: ignore[attr-defined]
    assert page.locator(":focus").text_content() == "← All tasks"  # type: ignore[attr-defined]
    page.keyboard.press("Enter")  # type: ignore[attr-defined]
    page.wait_for_url(lambda url: url.endswith("#/tasks"))  # type: ignore[attr-defined]
    page.context.close()  # type: ignore[attr-defined]


def test_a_late_answer_never_paints_over_a_newer_page(
    browser: object, live_server: str, org: Org
) -> None:
    """A slow request from the page the user left must not replace the page they went to."""
    page = open_page(browser)
    held: list[object] = []
    # Hold the first tasks request (default range, date order) until the second has rendered.
    page.route(  # type: ignore[attr-defined]
        lambda url: "/api/v1/usage/tasks?" in url and "sort=created_at" in url,
        lambda route: held.append(route),
    )
    sign_in(page, live_server, org.boss.key)
    page.wait_for_selector("#total-credits")  # type: ignore[attr-defined]
    page.goto(f"{live_server}/#/tasks")  # type: ignore[attr-defined]
    for _ in range(100):
        if held:
            break
        page.wait_for_timeout(50)  # type: ignore[attr-defined]
    assert held, "the first tasks request never left the page"
    page.goto(f"{live_server}/#/tasks?{RANGE}&sort=cost")  # type: ignore[attr-defined]
    page.wait_for_selector("#tasks-table tbody tr")  # type: ignore[attr-defined]
    with page.expect_response(lambda r: "sort=created_at" in r.url):  # type: ignore[attr-defined]
        held[0].continue_()  # type: ignore[attr-defined]
    page.wait_for_timeout(300)  # type: ignore[attr-defined]
    ids = page.locator("#tasks-table tbody tr td:first-child").all_text_contents()  # type: ignore[attr-defined]
    assert ids == ["T-B", "T-A", "T-C"]
    assert page.text_content("#page-info") == "1–3 of 3"  # type: ignore[attr-defined]
    page.context.close()  # type: ignore[attr-defined]


def test_members_and_bad_keys_get_clear_messages(
    browser: object, live_server: str, org: Org
) -> None:
    page = open_page(browser, 390)
    sign_in(page, live_server, org.eve.key)
    alert = page.get_by_role("alert")  # type: ignore[attr-defined]
    alert.wait_for()
    assert "team admins only" in alert.text_content()
    assert "member of acme" in alert.text_content()
    shot(page, "member-390")
    sign_in(page, live_server, "neo_sk_" + "x" * 32)
    page.get_by_text("That key was not accepted").wait_for()  # type: ignore[attr-defined]
    page.context.close()  # type: ignore[attr-defined]


def test_pages_are_light_and_locked_down(client: TestClient) -> None:
    page = client.get("/")
    assert (
        page.status_code == 200 and "default-src 'self'" in page.headers["content-security-policy"]
    )
    assets = [
        "/static/app.js",
        "/static/app.css",
        "/static/vendor/uPlot.iife.min.js",
        "/static/vendor/uPlot.min.css",
    ]
    total = len(page.content)
    for asset in assets:
        answer = client.get(asset)
        assert answer.status_code == 200 and "nosniff" in answer.headers["x-content-type-options"]
        total += len(answer.content)
    assert total < 300 * 1024, f"dashboard assets weigh {total} bytes"
    assert "cdn" not in page.text.lower() and "https://" not in page.text
