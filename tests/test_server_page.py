"""The web page at `/` in headless Chromium (Debian's `chromium`, driven by Playwright): it loads,
speaks a sentence with the synthetic model while the audio streams in, and its audio element plays.

CI installs chromium (.ci/run); there a missing browser fails this test instead of skipping it.
"""

import os
import shutil
from pathlib import Path

import pytest

from tests.server_harness import FAST_CHUNKS, Server

ARTIFACTS = Path(os.environ.get("NIGHTINGALE_TEST_ARTIFACTS", Path(__file__).resolve().parents[1] / "test-artifacts"))
CHROMIUM_NAMES = ("chromium", "chromium-browser")


def chromium_path() -> str:
    found = next((shutil.which(n) for n in CHROMIUM_NAMES if shutil.which(n)), None)
    if found is None:
        message = "Chromium is not installed (apt-get install chromium)"
        if os.environ.get("CI"):
            pytest.fail(message + "; .ci/run installs it")
        pytest.skip(message)
    return found


@pytest.fixture(scope="module")
def server(cache, tmp_path_factory, tts):
    # The page sends no token cap; the server's keeps the random model's babble short.
    srv = Server(cache, tmp_path_factory.mktemp("log") / "page.log", *FAST_CHUNKS, "--max-new-tokens", "30")
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    path = chromium_path()
    with sync_playwright() as p:
        # Debian's build, not a downloaded one; no sandbox as root, autoplay as after a click. Chromium
        # aborts with OpenBLAS preloaded (the CI's LD_PRELOAD), so it starts without it.
        env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
        b = p.chromium.launch(executable_path=path, headless=True, env=env, timeout=60_000,
                              args=["--no-sandbox", "--autoplay-policy=no-user-gesture-required"])
        yield b
        b.close()


def test_the_page_speaks_while_streaming_and_its_audio_plays(server, browser):
    page = browser.new_page()
    problems = []
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.goto(server.url + "/")
    page.wait_for_function("document.querySelector('#model').textContent.includes('chatterbox')")
    assert page.locator("#voice option").first.inner_text() == "default"
    page.fill("#text", "Hello from the browser, this sentence streams in several chunks.")
    page.click("#speak")
    page.wait_for_function("window.nightingale.state === 'done' || window.nightingale.state === 'error'",
                           timeout=120_000)
    state = page.evaluate("window.nightingale")
    assert state["state"] == "done", state
    # Playback was scheduled from the first chunk, before the stream had finished.
    assert state["chunks"] >= 2 and state["firstAudioMs"] < state["doneMs"], state
    page.wait_for_function("document.querySelector('#audio').duration > 0")
    duration = page.evaluate("document.querySelector('#audio').duration")
    assert abs(duration - state["bytes"] / 2 / 24000) < 0.05
    page.evaluate("document.querySelector('#audio').play()")
    page.wait_for_function("document.querySelector('#audio').currentTime > 0", timeout=10_000)
    assert page.get_attribute("#download", "download") == "speech.wav" and page.is_visible("#download")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "server_page.png"), full_page=True)
    assert not problems, problems
    page.close()


def test_the_page_shows_the_servers_error(server, browser):
    page = browser.new_page()
    page.goto(server.url + "/")
    page.wait_for_function("document.querySelectorAll('#voice option').length > 0")
    page.fill("#text", "x" * 10)
    page.evaluate("document.querySelector('#voice').innerHTML = '<option value=\"nobody\">nobody</option>'")
    page.click("#speak")
    page.wait_for_function("window.nightingale.state === 'error'", timeout=60_000)
    assert "voice 'nobody' not found" in page.inner_text("#status")
    page.close()
