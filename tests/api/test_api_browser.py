"""A real browser (Playwright driving Debian's headless chromium) against the running stack with
the real SmolLM2: ask a question, watch the answer stream in with a code cell and its sandbox
output, give a thumbs-up, find the feedback in Redis. Saves a screenshot under artifacts/.

The problem and settings were checked to make SmolLM2 (greedy) write a python block:
"Compute $2^{10} + 7$." with at most 2 tool calls (it prints 1031).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
import redis
from support.gateway_stack import ARTIFACTS, RunningApp

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PROBLEM = "Compute $2^{10} + 7$."

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists() and shutil.which("chromium") is None,
                       reason="chromium missing: apt-get install -y chromium (scripts/setup.sh dev does)"),
]


@pytest.mark.slow
def test_chat_page_streams_a_code_cell_and_stores_feedback(smol_app: RunningApp, redis_client: redis.Redis) -> None:
    from playwright.sync_api import expect, sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    requests: list[str] = []
    problems: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("request", lambda r: requests.append(r.url))
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.goto(smol_app.url + "/")
            expect(page.get_by_test_id("model-version")).to_have_text(smol_app.state.model_version, timeout=15_000)
            page.get_by_test_id("problem").fill(PROBLEM)
            t0 = time.monotonic()
            page.get_by_test_id("send").click()

            # streamed: text shows up while the episode is still live (the caret blinks)
            expect(page.locator(".episode .caret")).to_be_visible(timeout=120_000)
            cell = page.locator("details.cell").first
            expect(cell.locator(".cell-output")).to_be_visible(timeout=400_000)
            expect(page.get_by_test_id("final-answer")).to_be_visible(timeout=400_000)
            elapsed = time.monotonic() - t0
            expect(cell.locator(".cell-status")).to_have_text("ok")
            assert "print" in cell.locator(".cell-code").inner_text()
            assert "1031" in cell.locator(".cell-output").inner_text()
            expect(page.locator(".answered-version")).to_have_text(smol_app.state.model_version)
            expect(page.locator(".history-item")).to_have_count(1)
            assert page.locator(".user .katex").count() >= 1  # the problem's $2^{10}$ is typeset by KaTeX
            page.screenshot(path=str(ARTIFACTS / "chat_page.png"), full_page=False)

            tid = page.locator(".thumbs").first.get_attribute("data-trajectory-id")
            assert tid
            page.get_by_test_id("thumb-up").first.click()
            expect(page.get_by_test_id("feedback-saved")).to_be_visible(timeout=15_000)
            page.screenshot(path=str(ARTIFACTS / "chat_page_feedback.png"), full_page=False)
        finally:
            browser.close()

    stored = [json.loads(x) for x in redis_client.hvals(f"mathagent:feedback:by-caller:{tid}")]  # latest per caller
    assert [f["rating"] for f in stored] == ["up"]
    assert stored[0]["trusted"] is True  # the page sent the solve's feedback token: a training label, not a vote
    traj = json.loads(redis_client.xrange("mathagent:trajectories", redis_client.hget("mathagent:trajectories:index", tid),
                                          redis_client.hget("mathagent:trajectories:index", tid))[0][1]["data"])
    assert traj["problem"] == PROBLEM and traj["calls"], "the trajectory behind the thumbs holds the code cell"
    # offline: every request the page made went to the gateway itself (no CDN)
    assert requests and all(u.startswith(smol_app.url) or u.startswith("data:") for u in requests), requests
    assert not problems, problems
    print(f"browser solve took {elapsed:.1f}s")


def test_hostile_model_output_is_rendered_inert(tiny_app: RunningApp) -> None:
    """A logged trajectory whose text carries HTML, a javascript: link, ANSI escapes, NUL and a bidi
    override is replayed from the history: nothing executes, control characters are neutralised."""
    import asyncio

    from playwright.sync_api import expect, sync_playwright

    from agent.trajectory import Segment, SegmentKind, Trajectory

    hostile = ('Look: <img src=x onerror="window.__pwned=1"> <script>window.__pwned=2</script> '
               '[click](javascript:window.__pwned=3) \x1b[31mRED\x1b[0m nul\x00here \u202eevil\u202c $x^2$ \\boxed{42}')
    traj = Trajectory(problem="hostile <b>problem</b>", model_version="tiny-random-v1", answer="42",
                      segments=[Segment(kind=SegmentKind.prompt, text="p", token_ids=[1]),
                                Segment(kind=SegmentKind.model, text=hostile, token_ids=[2])])
    asyncio.run_coroutine_threadsafe(tiny_app.state.trajectory_log.append(traj), tiny_app.task.get_loop()).result(30)
    entry = {"problem": traj.problem, "answer": "42", "correct": None, "trajectory_id": traj.id,
             "model_version": "tiny-random-v1", "at": 0}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page()
            page.goto(tiny_app.url + "/")
            page.evaluate("e => localStorage.setItem('mathagent.history.v1', JSON.stringify([e]))", entry)
            page.reload()
            page.locator(".history-item").first.click()
            expect(page.get_by_test_id("final-answer")).to_be_visible(timeout=15_000)
            page.locator("a").evaluate_all("links => links.forEach(a => a.click())")
            text = page.locator(".episode-body").inner_text()
            assert page.evaluate("window.__pwned") is None
            assert page.locator(".episode-body img[onerror], .episode-body script").count() == 0
            assert "hostile" in page.locator(".user").inner_text()  # harmless markup survives sanitising
            assert "\x1b" not in text and "[31m" not in text and "RED" in text
            assert "\x00" not in text and "\u2400" in text
            assert "\u202e" not in text and "U+202E" in text
            assert page.locator(".episode-body .katex").count() >= 2  # $x^2$ and \boxed{42}
        finally:
            browser.close()



# ---------------------------------------------------------------- layout, options, outages (tiny model)

DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}


def _open(p, app: RunningApp, viewport: dict[str, int], problems: list[str]):  # type: ignore[no-untyped-def]
    """A page on the gateway; console errors and page errors (a CSP violation is one) go to ``problems``."""
    from playwright.sync_api import expect

    browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
    page = browser.new_page(viewport=viewport)
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.goto(app.url + "/")
    expect(page.get_by_test_id("model-version")).to_have_text(app.state.model_version, timeout=15_000)
    return browser, page


def _in_view(page, locator) -> bool:  # type: ignore[no-untyped-def]
    box = locator.bounding_box()
    width = page.viewport_size["width"]
    return box is not None and box["x"] >= 0 and box["x"] + box["width"] <= width + 1 and locator.is_visible()


@pytest.mark.parametrize("viewport", [DESKTOP, PHONE], ids=["1280px", "390px"])
def test_navigation_history_and_math_at_desktop_and_phone_widths(tiny_app: RunningApp, viewport: dict[str, int]) -> None:
    """At 1280 px the sidebar is there; at 390 px a top bar (menu, model chip, New) opens it as a drawer
    with the history, "New problem" and the health chip. Math is typeset in history entries and
    example chips, under a CSP without inline styles (a violation would be a console error)."""
    from playwright.sync_api import expect, sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    entry = {"problem": "Is $x^2 + 1 > 0$ for every real $x$?", "answer": "yes", "correct": None,
             "trajectory_id": "0" * 32, "model_version": "tiny-random-v1", "at": 0}
    problems: list[str] = []
    with sync_playwright() as p:
        browser, page = _open(p, tiny_app, viewport, problems)
        try:
            page.evaluate("e => localStorage.setItem('mathagent.history.v1', JSON.stringify([e]))", entry)
            page.reload()
            expect(page.get_by_test_id("model-version")).to_have_text(tiny_app.state.model_version, timeout=15_000)
            assert page.locator(".example .katex").count() >= 2  # $360 = 2^3 ...$ and $x^2 - 5x + 6 = 0$
            sidebar, history = page.locator("#sidebar"), page.locator(".history-item")
            if viewport is DESKTOP:
                expect(page.get_by_test_id("topbar")).to_be_hidden()
                assert _in_view(page, sidebar) and _in_view(page, page.get_by_test_id("new-problem"))
            else:
                expect(page.get_by_test_id("topbar")).to_be_visible()
                expect(page.get_by_test_id("model-version-top")).to_have_text(tiny_app.state.model_version)
                assert not _in_view(page, sidebar)
                page.get_by_test_id("menu").click()
                expect(page.get_by_test_id("menu")).to_have_attribute("aria-expanded", "true")
                page.wait_for_function("() => document.querySelector('#sidebar').getBoundingClientRect().x >= 0")
                for part in (sidebar, history.first, page.get_by_test_id("new-problem"), page.get_by_test_id("health-dot")):
                    assert _in_view(page, part)
                page.screenshot(path=str(ARTIFACTS / "chat_page_390_drawer.png"))
                page.locator("#backdrop").click(position={"x": 370, "y": 400})
                expect(page.get_by_test_id("menu")).to_have_attribute("aria-expanded", "false")
                page.get_by_test_id("menu").click()
            assert history.first.locator(".katex").count() >= 2  # the entry's $x^2 + 1 > 0$ and $x$
            page.get_by_test_id("new-problem").click()
            expect(page.get_by_test_id("examples")).to_be_visible()
            page.screenshot(path=str(ARTIFACTS / f"chat_page_{viewport['width']}.png"))
        finally:
            browser.close()
    assert not problems, problems


def test_expected_answer_belongs_to_one_problem(tiny_app: RunningApp) -> None:
    """The expected answer grades the problem it was sent with, then is cleared: the next problem is
    not graded against it. "New problem" clears the thread, the text and the expected answer."""
    from playwright.sync_api import expect, sync_playwright

    problems: list[str] = []
    with sync_playwright() as p:
        browser, page = _open(p, tiny_app, PHONE, problems)
        try:
            page.locator("#options summary").click()
            page.get_by_test_id("gold").fill("5")
            expect(page.locator("#options-set")).to_be_visible()
            page.get_by_test_id("problem").fill("What is 2 + 3?")
            page.get_by_test_id("send").click()
            first = page.locator(".turn").nth(0)
            expect(first.get_by_test_id("final-answer")).to_be_visible(timeout=120_000)
            expect(first.locator(".verdict")).to_be_visible()  # graded: ✓ verified or ✗ expected 5
            expect(page.get_by_test_id("gold")).to_have_value("")
            expect(page.locator("#options-set")).to_be_hidden()
            page.get_by_test_id("problem").fill("What is 3 + 4?")
            page.get_by_test_id("send").click()
            second = page.locator(".turn").nth(1)
            expect(second.get_by_test_id("final-answer")).to_be_visible(timeout=120_000)
            expect(second.locator(".verdict")).to_have_count(0)  # not graded against the first problem's answer
            page.get_by_test_id("gold").fill("7")
            page.get_by_test_id("problem").fill("draft")
            page.get_by_test_id("new-problem-top").click()
            expect(page.locator(".turn")).to_have_count(0)
            expect(page.get_by_test_id("examples")).to_be_visible()
            expect(page.get_by_test_id("problem")).to_have_value("")
            expect(page.get_by_test_id("gold")).to_have_value("")
        finally:
            browser.close()
    assert not problems, problems


@pytest.mark.parametrize("viewport", [DESKTOP, PHONE], ids=["1280px", "390px"])
def test_a_sandbox_outage_says_what_to_do(tiny_app: RunningApp, viewport: dict[str, int]) -> None:
    """While the sandbox is down a problem is refused at once; the page shows the reason and what to
    do, wrapped inside the screen, with a "Try again" that works once the sandbox is back."""
    from playwright.sync_api import expect, sync_playwright
    from support.outage import sandbox_down

    problems: list[str] = []
    with sync_playwright() as p:
        with sandbox_down(tiny_app):
            browser, page = _open(p, tiny_app, viewport, problems)
            try:
                if viewport is DESKTOP:
                    expect(page.get_by_test_id("health-note")).to_contain_text("sandbox", timeout=15_000)
                    expect(page.get_by_test_id("health-dot")).to_have_class("dot down")
                else:
                    expect(page.locator("#health-dot-top")).to_have_class("dot down", timeout=15_000)
                page.get_by_test_id("problem").fill("What is 6 * 7?")
                page.get_by_test_id("send").click()
                box = page.get_by_test_id("error")
                expect(box).to_be_visible(timeout=30_000)
                expect(box).to_contain_text("sandbox")
                expect(box).to_contain_text("Try again")
                expect(box).to_contain_text("Wait 5 s")
                fits = box.evaluate("b => b.scrollWidth <= b.clientWidth && b.getBoundingClientRect().right <= innerWidth")
                assert fits, "the error message must wrap inside the screen"
                page.screenshot(path=str(ARTIFACTS / f"chat_page_outage_{viewport['width']}.png"))
            except BaseException:
                browser.close()
                raise
        try:
            page.get_by_test_id("retry").click()  # the sandbox is back
            expect(page.get_by_test_id("final-answer")).to_be_visible(timeout=120_000)
        finally:
            browser.close()
    assert all("503" in m for m in problems), problems  # only the refused request's own console line


@pytest.mark.slow
def test_stop_marks_unfinished_cells_stopped(smol_app: RunningApp) -> None:
    """Stop while SmolLM2 writes or runs its first cell: no cell keeps a "writing" or "running"
    badge (it never will finish); the turn says it was stopped and offers to try again."""
    from playwright.sync_api import expect, sync_playwright

    problems: list[str] = []
    with sync_playwright() as p:
        browser, page = _open(p, smol_app, DESKTOP, problems)
        try:
            page.get_by_test_id("problem").fill(PROBLEM)
            page.get_by_test_id("send").click()
            expect(page.locator("details.cell").first).to_be_visible(timeout=400_000)  # the fence just opened
            page.get_by_test_id("stop").click()
            expect(page.get_by_test_id("stopped")).to_be_visible(timeout=30_000)
            expect(page.get_by_test_id("stopped")).to_contain_text("Try again")
            statuses = page.locator(".cell-status").all_inner_texts()
            assert statuses and not {"writing", "running"} & set(statuses), statuses
            print(f"cells after stop: {statuses}")
        finally:
            browser.close()
    assert not problems, problems
