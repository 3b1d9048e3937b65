"""The dashboard in real headless Chromium (Debian's `chromium`, driven by Playwright through its
executable path), against a live server seeded with tests/usage_org.py, on both stores.

Screenshots of every page go to artifacts/dashboard/ (overview, tasks, task, member message,
each at 1280 px and 390 px wide; demo-*: the same pages on `taskmeter demo`'s data at 1280×800
and 390×844, where the tables must fit, the caps panel show and no focus ring frame the page).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from taskmeter.config import Settings
from taskmeter.demo import run_demo
from taskmeter.store import Store
from tests.factories import Factory
from tests.timeline_checks import overlapping
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


def open_page(browser: object, width: int = 1280, height: int = 900) -> object:
    context = browser.new_context(  # type: ignore[attr-defined]
        viewport={"width": width, "height": height}, timezone_id="Europe/Berlin"
    )
    return context.new_page()


def sign_in(page: object, base: str, key: str) -> None:
    page.goto(base + "/")  # type: ignore[attr-defined]
    page.get_by_label("API key").fill(key)  # type: ignore[attr-defined]
    page.get_by_role("button", name="Sign in").click()  # type: ignore[attr-defined]


def shot(page: object, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)  # type: ignore[attr-defined]


def assert_no_page_outline(page: object) -> None:
    """Focus sits on <main> after a navigation (for screen readers), drawn as no outline."""
    main = page.locator("main")  # type: ignore[attr-defined]
    focused, style, width = main.evaluate(
        "m => [document.activeElement === m, getComputedStyle(m).outlineStyle,"
        " getComputedStyle(m).outlineWidth]"
    )
    assert focused, "focus did not move to the content"
    assert style == "none" or width == "0px", f"main is outlined: {style} {width}"


def assert_table_fits(page: object, table: str) -> None:
    """No horizontal scrolling (the table's container, the page) and the credits column in
    view: its header on a wide screen, the first card's credits line on a narrow one."""
    wrap = page.locator(f".table-wrap:has({table})")  # type: ignore[attr-defined]
    scroll, client = wrap.evaluate("e => [e.scrollWidth, e.clientWidth]")
    assert scroll <= client, f"{table} scrolls sideways: {scroll} > {client}"
    scroll, client = page.locator("html").evaluate(  # type: ignore[attr-defined]
        "e => [e.scrollWidth, e.clientWidth]"
    )
    assert scroll <= client, f"the page scrolls sideways: {scroll} > {client}"
    viewport = page.viewport_size  # type: ignore[attr-defined]
    header = page.locator(f"{table} thead th", has_text="Credits")  # type: ignore[attr-defined]
    cell = page.locator(f"{table} tbody tr").first.locator("td[data-label=Credits]")  # type: ignore[attr-defined]
    shown = header if viewport["width"] > 720 else cell
    playwright_api.expect(shown).to_be_visible()
    box = shown.bounding_box()
    assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= viewport["width"]
    shown.scroll_into_view_if_needed()  # down the page is fine; sideways is not
    box = shown.bounding_box()
    assert box is not None and box["y"] >= 0 and box["y"] + box["height"] <= viewport["height"]


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
        assert page.locator("#caps").count() == 0  # type: ignore[attr-defined]  # no caps, no panel
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
    page.wait_for_selector("#tasks-table")  # type: ignore[attr-defined]
    playwright_api.expect(page.locator("main")).to_be_focused()  # type: ignore[attr-defined]
    assert_no_page_outline(page)  # a keyboard navigation: where the ring had shown
    page.context.close()  # type: ignore[attr-defined]


@pytest.mark.parametrize("size", [(1280, 800), (390, 844)], ids=["1280", "390"])
def test_demo_pages_fit_and_show_the_caps(
    browser: object, live_server: str, store: Store, settings: Settings, size: tuple[int, int]
) -> None:
    """On the demo's data: the caps panel, the tables with their credits column in view and
    nothing scrolling sideways, long titles cut with the whole title on hover, and the task
    page's timeline with a parallel burst."""
    demo = run_demo(store, settings, tasks=40)
    width = size[0]
    admin = demo.keys["admin@acme.example"]
    page = open_page(browser, *size)
    sign_in(page, live_server, admin)
    caps = page.locator("#caps li")  # type: ignore[attr-defined]
    playwright_api.expect(caps).to_have_count(2)
    assert "Team Acme Security" in caps.nth(0).text_content()
    assert "/ 6.0000 credits" in caps.nth(0).text_content()
    assert "Project External pentest" in caps.nth(1).text_content()
    assert "/ 8.0000 credits" in caps.nth(1).text_content()
    assert "resets" in caps.nth(0).text_content()  # a month's cap
    assert "never resets" in caps.nth(1).text_content()  # a budget in all
    assert_no_page_outline(page)
    shot(page, f"demo-overview-{width}")
    page.get_by_role("link", name="Tasks").click()  # type: ignore[attr-defined]
    page.goto(f"{live_server}/#/tasks?from=2000-01-01&sort=cost")  # type: ignore[attr-defined]
    page.wait_for_selector("#tasks-table tbody tr")  # type: ignore[attr-defined]
    assert_table_fits(page, "#tasks-table")
    assert_no_page_outline(page)
    titles = page.locator("#tasks-table td.c-title")  # type: ignore[attr-defined]
    cut = [
        (text, full)
        for text, full, clipped in titles.evaluate_all(
            "cells => cells.map(c => [c.textContent, c.title, c.scrollWidth > c.clientWidth])"
        )
        if clipped
    ]
    if width == 1280:  # cut with an ellipsis, whole on hover; cards wrap them instead
        assert cut and all(text == full for text, full in cut)
    else:
        assert not cut
    shot(page, f"demo-tasks-{width}")
    # The task page of a task whose timeline has a parallel burst (overlapping bars).
    headers = {"X-Api-Key": admin}
    with httpx.Client(base_url=live_server, headers=headers) as client:
        rows = client.get("/api/v1/usage/tasks", params={"limit": 100}).json()["data"]
        bursting = next(
            task["task_id"]
            for task in (client.get(f"/api/v1/usage/tasks/{r['task_id']}").json() for r in rows)
            if task["stream_count"] > 1
            and overlapping([(c["timestamp"], c["duration_ms"]) for c in task["tool_call_history"]])
        )
    page.locator("#tasks-table a", has_text=bursting).click()  # type: ignore[attr-defined]
    page.wait_for_selector("#streams-table tbody tr")  # type: ignore[attr-defined]
    assert_table_fits(page, "#streams-table")
    assert_no_page_outline(page)
    shot(page, f"demo-task-{width}")
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
