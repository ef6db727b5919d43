"""The console in a real headless Chromium (Debian's /usr/bin/chromium, driven by Playwright): the demo's
one-time link logs in, the demo room goes live on the overview without a reload, an operator's reply is
sent and plays, the room is paused and resumed, every page renders, and no page logs an error.

Screenshots of each page are kept in ``build/console-screenshots`` (``CONSOLE_SCREENSHOTS`` elsewhere).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import ConsoleMessage, Page, expect, sync_playwright

ROOT = Path(__file__).resolve().parent.parent.parent
CHROMIUM = "/usr/bin/chromium"
SHOTS = Path(os.environ.get("CONSOLE_SCREENSHOTS", ROOT / "build" / "console-screenshots"))

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed"),
]


class Demo:
    def __init__(self, process: subprocess.Popen[str], base_url: str, link: str, token_file: Path) -> None:
        self.process, self.base_url, self.link, self.token_file = process, base_url, link, token_file


@pytest.fixture
def demo(redis_url: str) -> Iterator[Demo]:
    """``orchestrator demo`` as a user runs it (on the tests' Redis), until its console link is printed."""
    yield from _demo(redis_url, "metastudio")


@pytest.fixture
def softsugar_demo(redis_url: str) -> Iterator[Demo]:
    yield from _demo(redis_url, "softsugar")


def _demo(redis_url: str, vendor: str) -> Iterator[Demo]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}
    argv = ["demo", "--redis-url", redis_url, "--live-in", "8", "--speed", "6", "--duration", "170"]
    process = subprocess.Popen(
        [sys.executable, "-m", "orchestrator", *argv, "--vendor", vendor],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert process.stdout is not None
    base_url = link = token_file = None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (link and token_file):
        line = process.stdout.readline()
        if not line:
            break
        if m := re.search(r"console: (http://\S+)/console/ -- log in once with (\S+)", line):
            base_url, link = m.group(1), m.group(2)
        if m := re.search(r"log in with the token in (\S+)\)", line):
            token_file = Path(m.group(1))
    assert base_url and link and token_file, "the demo printed no console link"
    try:
        yield Demo(process, base_url, link, token_file)
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()


def _watch_errors(page: Page, errors: list[str]) -> None:
    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            errors.append(f"console: {message.text}")

    page.on("console", on_console)
    page.on("pageerror", lambda exc: errors.append(f"page: {exc}"))


def _shot(page: Page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def test_an_operator_watches_the_demo_go_live_replies_and_pauses(demo: Demo) -> None:
    errors: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1360, "height": 900})
            _watch_errors(page, errors)

            # The one-time link: logged in, on the overview; the room is not live yet.
            page.goto(demo.link)
            expect(page).to_have_url(re.compile(r"/console/"))
            tile = page.locator('[data-room="demo-room"]')
            expect(tile).to_be_visible(timeout=10_000)
            assert tile.get_attribute("data-status") != "live"
            expect(page.locator("#who")).to_have_text("signed in as admin")
            # Live, on the page as it is: the tile changes without a reload (server-sent events).
            expect(tile).to_have_attribute("data-status", "live", timeout=40_000)
            expect(tile).to_contain_text("CONNECTED", timeout=20_000)
            page.fill("#search", "no-such-room")
            expect(page.locator('[data-room="demo-room"]')).to_have_count(0)
            page.fill("#search", "demo")
            expect(tile).to_be_visible()
            _shot(page, "1-rooms")

            # The room page: the timeline fills as things happen.
            tile.click()
            expect(page.locator("#room-status")).to_have_text("live", timeout=10_000)
            expect(page.locator('#timeline [data-kind="SHOOT_SCRIPT_SWITCH"]').first).to_be_visible(
                timeout=20_000
            )
            expect(page.locator("#schedule table")).to_be_visible()

            # An operator's reply: queued, inserted, finished playing.
            text = "各位好，这是操作员刚刚发的回复。"
            page.fill("#reply-text", text)
            page.click("#reply-form button[type=submit]")
            inserted = page.locator('#timeline [data-kind="reply_inserted"]', has_text=text)
            expect(inserted).to_be_visible(timeout=20_000)
            reply_id = inserted.get_attribute("data-reply")
            assert reply_id
            expect(
                page.locator(f'#timeline [data-kind="REPLY_COMMAND_FINISH"][data-reply="{reply_id}"]')
            ).to_be_visible(timeout=40_000)
            _shot(page, "2-room")

            # Pause (confirmed), then resume (confirmed): the page and the daemon agree.
            page.on("dialog", lambda dialog: dialog.accept())
            page.click("#pause")
            expect(page.locator("#resume")).to_be_visible(timeout=10_000)
            expect(page.locator("#force-stop")).to_be_enabled()
            expect(page.locator("#room-head")).to_contain_text("automation paused")
            page.click("#resume")
            expect(page.locator("#pause")).to_be_visible(timeout=10_000)
            expect(page.locator("#force-stop")).to_be_disabled()
            expect(page.locator('#timeline [data-kind="review_decided"]')).to_have_count(0)
            # Review mode on and off from the room page.
            page.click("#review-toggle")
            expect(page.locator("#review")).to_contain_text("On: automatic replies wait here", timeout=10_000)
            page.click("#review-toggle")
            expect(page.locator("#review")).to_contain_text("Off: automatic replies", timeout=10_000)
            # The charts and the schedule are drawn (samples come once a minute: maybe none yet).
            expect(page.locator('#charts svg[data-series="viewers"]')).to_be_visible()
            expect(page.locator('#charts svg[data-series="comments_per_min"]')).to_be_visible()

            page.goto(f"{demo.base_url}/console/#/alerts")
            expect(page.locator("h1")).to_have_text("Alerts")
            expect(page.get_by_text("Nothing is open.")).to_be_visible(timeout=15_000)
            _shot(page, "3-alerts")

            page.goto(f"{demo.base_url}/console/#/daemon")
            expect(page.locator("#replicas tbody tr")).to_have_count(1, timeout=15_000)
            expect(page.locator("#vendors")).to_contain_text("configured")
            _shot(page, "4-daemon")

            page.goto(f"{demo.base_url}/console/#/api")
            expect(page.locator("#operations details").first).to_be_visible(timeout=10_000)
            page.fill("#api-filter", "GET /api/rooms/{room_id}/schedule")
            operation = page.locator("#operations details").first
            operation.locator("summary").click()
            operation.locator("input").first.fill("demo-room")
            operation.get_by_role("button", name="Send").click()
            expect(operation.locator("pre")).to_contain_text('"desired"', timeout=10_000)
            _shot(page, "5-api")

            # Log out: back to the login; the page cannot read anything any more.
            page.click("#logout")
            expect(page.locator("#token")).to_be_visible(timeout=10_000)
            status = page.evaluate("fetch('/api/rooms').then(r => r.status)")
            assert status == 401
            # And in again with the token, through the form (a wrong one first).
            page.fill("#token", "not-the-token-at-all")
            page.click("form button[type=submit]")
            expect(page.locator("#login-error")).to_contain_text("opens nothing", timeout=10_000)
            _shot(page, "0-login")
            page.fill("#token", demo.token_file.read_text())
            page.click("form button[type=submit]")
            expect(page.locator('[data-room="demo-room"]')).to_be_visible(timeout=10_000)
        finally:
            browser.close()
    # The one 401 the test provoked on purpose (after logout) is the page's fetch, not an error it logged;
    # the failed login is answered 401 too, which Chromium reports as a failed resource load.
    unexpected = [e for e in errors if "401" not in e]
    assert unexpected == []


def test_an_operator_takes_the_mic_of_a_softsugar_room(softsugar_demo: Demo) -> None:
    """Chromium's fake microphone (a tone) through the console, the daemon's relay, to the vendor's socket."""
    errors: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"],
        )
        try:
            context = browser.new_context(viewport={"width": 1360, "height": 900})
            context.grant_permissions(["microphone"])
            page = context.new_page()
            _watch_errors(page, errors)
            page.goto(softsugar_demo.link)
            tile = page.locator('[data-room="demo-room"]')
            expect(tile).to_have_attribute("data-status", "live", timeout=60_000)
            expect(tile).to_contain_text("softsugar")
            tile.click()
            page.on("dialog", lambda dialog: dialog.accept())
            expect(page.locator("#mic")).to_be_visible(timeout=10_000)
            page.click("#mic")
            expect(page.locator("#mic")).to_have_text("Release the mic", timeout=15_000)
            taken = page.locator('#timeline [data-kind="microphone"]', has_text="taken")
            expect(taken).to_be_visible(timeout=15_000)
            page.wait_for_timeout(1500)  # a second and a half of the fake microphone's tone goes through
            _shot(page, "6-softsugar-mic")
            page.click("#mic")
            expect(page.locator("#mic")).to_have_text("Take the mic", timeout=10_000)
            expect(page.locator('#timeline [data-kind="microphone"]', has_text="released")).to_be_visible(
                timeout=15_000
            )
        finally:
            browser.close()
    assert [e for e in errors if "401" not in e] == []


@pytest.fixture(autouse=True, scope="module")
def _clean_screenshots() -> None:
    shutil.rmtree(SHOTS, ignore_errors=True)
