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

