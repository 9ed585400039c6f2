"""The /ui page of `distilsent serve`, in a real headless Chromium: type a text, get the label the API
gives, word highlights from /explain, a batch, a screenshot, and not one request off the server."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the page is served by `distilsent serve`: pip install 'distilsent[serve]'")
import httpx  # noqa: E402

from distilsent.insight.explain import split_words  # noqa: E402

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
TEXT = "i love this great movie , the actors are fun"
LINES = ["a great film", "awful , boring plot", "the worst"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tiny_model_dir):
    """`distilsent serve` on the tiny model, as a user starts it."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "distilsent", "serve", "--model", str(tiny_model_dir), "--port", str(port),
         "--threads", "1", "--log-level", "warning"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if process.poll() is not None:
            pytest.fail("distilsent serve exited: " + process.stderr.read().decode())
        time.sleep(0.2)
    else:
        process.kill()
        pytest.fail("distilsent serve did not become healthy in 60 s")
    yield url
    process.terminate()
    process.wait(30)


def test_page_is_self_contained(server):
    response = httpx.get(server + "/ui")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    page = response.text
    for external in ('src="http', "src='http", 'href="http', "url(http", "@import", "<link"):
        assert external not in page
    assert '<script src' not in page and "<script>" in page  # inline script only, no build step


def test_explain_route(server):
    data = httpx.post(server + "/explain", json={"inputs": TEXT}).json()
    assert data["words"] == [w for w, _, _ in split_words(TEXT)] and len(data["attributions"]) == len(data["words"])
    [[best, *_]] = httpx.post(server + "/", json={"inputs": TEXT}).json()  # one list per input, best first
    assert data["label"] == best["label"]
    for bad in ({"inputs": ["a", "b"]}, {"inputs": ""}, {"text": TEXT}, {"inputs": "word " * 300}):
        response = httpx.post(server + "/explain", json=bad)
        assert response.status_code == 422 and response.json()["error_type"] == "validation"


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.skip("no Chromium on this machine: apt-get install -y chromium (.ci/run installs it)")
    playwright = pytest.importorskip("playwright.sync_api", reason="the browser test drives Chromium with Playwright")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        browser.close()


def test_type_a_text_get_its_label_highlights_and_a_batch(server, browser, tmp_path):
    page = browser.new_page()
    outside = []

    def only_the_server(route):
        if route.request.url.startswith(server):
            route.continue_()
        else:  # the page must work offline: anything else would be a CDN, a font, a tracker
            outside.append(route.request.url)
            route.abort()

    page.route("**/*", only_the_server)
    console = []
    page.on("console", lambda message: console.append(message.text))
    page.goto(server + "/ui")
    page.fill("#text", TEXT)
    page.click("#classify")
    page.wait_for_function("() => document.querySelectorAll('#words span.w').length > 0", timeout=20_000)
    [scores] = httpx.post(server + "/", json={"inputs": TEXT}).json()
    assert page.text_content("#label") == f"{scores[0]['label']} {scores[0]['score']:.4f}"
    assert page.locator("#bars .bar").count() == len(scores)
    words = page.locator("#words span.w")
    assert words.all_text_contents() == [w for w, _, _ in split_words(TEXT)]
    assert page.text_content("#words") == TEXT  # highlights keep the text as typed
    explained = httpx.post(server + "/explain", json={"inputs": TEXT}).json()
    shown = [float(a) for a in words.evaluate_all("spans => spans.map(s => s.dataset.attribution)")]
    assert shown == pytest.approx(explained["attributions"], abs=1e-6)

    page.fill("#batch", "\n".join(LINES) + "\n\n")
    page.click("#run-batch")
    page.wait_for_function("() => document.querySelectorAll('#batch-results tbody tr').length === 3", timeout=20_000)
    expected = [labels[0]["label"] for labels in httpx.post(server + "/", json={"inputs": LINES}).json()]
    labels = page.locator("#batch-results tbody tr td:nth-child(2)").all_text_contents()
    assert labels == expected

    shot = Path(os.environ.get("DISTILSENT_UI_SCREENSHOT", tmp_path / "ui.png"))
    page.screenshot(path=str(shot), full_page=True)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert outside == []
    assert not [line for line in console if "Content Security Policy" in line], console  # nothing blocked
    page.close()


def test_the_abstain_band_answers_neutral_as_the_service_does(server, browser):
    [[best, *_]] = httpx.post(server + "/", json={"inputs": TEXT}).json()
    below = round(min(1.0, best["score"] + 0.005), 3)  # just above this text's best score: inside the band
    [[answer]] = httpx.post(server + "/", json={"inputs": TEXT, "parameters": {"neutral_below": below}}).json()
    assert answer["label"] == "NEUTRAL"
    page = browser.new_page()
    page.goto(server + "/ui")
    page.fill("#text", TEXT)
    page.check("#abstain")
    page.fill("#neutral-below", str(below))
    page.click("#classify")
    page.wait_for_function("() => document.querySelector('#label').textContent.length > 0", timeout=20_000)
    assert page.text_content("#label").startswith("NEUTRAL ")
    assert "Inside the abstain band" in page.text_content("#band-note")
    assert page.locator("#bars .bar .band").count() == 2  # the band is drawn on each label's bar
    page.fill("#batch", "\n".join(LINES))
    page.click("#run-batch")
    page.wait_for_function("() => document.querySelectorAll('#batch-results tbody tr').length === 3", timeout=20_000)
    expected = httpx.post(server + "/", json={"inputs": LINES, "parameters": {"neutral_below": below}}).json()
    labels = page.locator("#batch-results tbody tr td:nth-child(2)").all_text_contents()
    assert labels == [best["label"] for [best] in expected]
    page.close()


def test_no_other_site_can_frame_the_page(server, browser):
    page = browser.new_page()
    page.set_content(f'<iframe id="framed" src="{server}/ui" width="600" height="400"></iframe>')
    page.wait_for_load_state("load")
    [framed] = [frame for frame in page.frames if frame != page.main_frame]
    assert framed.locator("#classify").count() == 0  # refused: frame-ancestors 'none' and X-Frame-Options DENY
    page.close()


def test_errors_are_shown_on_the_page(server, browser):
    page = browser.new_page()
    page.goto(server + "/ui")
    page.fill("#text", "   ")
    page.click("#classify")
    assert page.text_content("#error") == "Type a text first."
    page.close()
