"""``GET /playground``: off unless ``server.playground``, its headers and policy, and the page
itself in a real headless Chromium (Selenium) against a real gateway on loopback: it lists the
routed voices, plays a synthesis while it streams (Web Audio), reports what the gateway
answered, shows errors, stops on Stop, and works behind tokens.

Chromium and chromedriver are Debian's (``chromium``, ``chromium-driver``); missing, the browser
tests are skipped on a developer's machine and fail in CI. With ``PLAYGROUND_SCREENSHOT=path``
the page is saved there after a synthesis (``docs/playground.png`` is made so)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import fnmatch
import hashlib
import importlib.machinery
import itertools
import json
import logging
import os
import re
import shutil
import tomllib
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import numpy as np
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.select import Select
from selenium.webdriver.support.wait import WebDriverWait
from starlette.testclient import TestClient

from gateway.app import create_app
from gateway.config import parse_config
from providers.base import ProviderError
from tests.deploy_support import REPO, in_ci
from tests.support import Plan, ScriptedProvider, live_server, log_line, provider_block, tone

TOKEN = "playground-s3cret"
RATE = 24000
CHUNK = tone(440, 0.1, RATE)
CHUNKS = 5  # half a second of audio at the provider's rate
#: Seconds a browser-side wait may take on a slow, loaded machine (the waits end at the event).
WAIT = 60.0

T = TypeVar("T")


def routing(**server: Any) -> str:
    """A routing file: ``joe`` (cached), ``broken`` failing over to ``backup``, ``slow`` that
    sends one chunk and then holds, and a pattern ``en-*``."""
    return json.dumps(
        {
            "server": {"default_voice": "joe", "playground": True, **server},
            "providers": {name: provider_block() for name in ("p", "down", "held")},
            "voices": {
                "joe": {"provider": "p", "cache": True},
                "backup": {"provider": "p"},
                "broken": {"provider": "down", "fallback": ["backup"]},
                "slow": {"provider": "held"},
                "en-*": {"provider": "p"},
            },
        }
    )


@pytest.fixture
def plans() -> Iterator[dict[str, Plan]]:
    hold = asyncio.Event()  # never set: the slow voice holds its stream until it is closed
    ScriptedProvider.plans.clear()
    ScriptedProvider.plans.update(
        {
            "p": Plan([[CHUNK] * CHUNKS]),
            "down": Plan([[ProviderError("down", "the upstream is down", retryable=False)]]),
            "held": Plan([[CHUNK, hold]]),
        }
    )
    yield ScriptedProvider.plans
    ScriptedProvider.plans.clear()


# ---------------------------------------------------------------- without a browser


def test_the_playground_is_off_by_default() -> None:
    config = json.loads(routing())
    del config["server"]["playground"]
    with TestClient(create_app(parse_config(json.dumps(config)))) as client:
        for path in ("/playground", "/playground/config"):
            response = client.get(path)
            assert response.status_code == 404
            assert response.json()["error"]["code"] == "not_found"
        assert client.get("/voices").status_code == 200  # the gateway itself is up


def test_the_page_is_served_with_a_strict_policy(plans: dict[str, Plan]) -> None:
    with TestClient(create_app(parse_config(routing()))) as client:
        response = client.get("/playground")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert response.headers["x-content-type-options"] == "nosniff"
    header = response.headers["content-security-policy"]
    policy = {
        name: value for name, _, value in (part.partition(" ") for part in header.split("; "))
    }
    html = response.text
    # Exactly the page's own script and style may run: by their hashes, nothing inline else.
    (script,) = re.findall(r"<script>(.*?)</script>", html, re.DOTALL)
    (style,) = re.findall(r"<style>(.*?)</style>", html, re.DOTALL)
    assert policy["script-src"] == _csp_hash(script)
    assert policy["style-src"] == _csp_hash(style)
    assert policy["default-src"] == "'none'"
    assert policy["connect-src"] == "'self'"
    assert policy["frame-ancestors"] == "'none'"
    assert "unsafe-inline" not in header
    # No inline event handlers (the policy would block them), no resource from elsewhere.
    assert not re.search(r"<[^>]*\son\w+\s*=", html)
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)


def _csp_hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


def test_the_page_config_is_token_guarded_like_voices(plans: dict[str, Plan]) -> None:
    with TestClient(create_app(parse_config(routing(tokens=[TOKEN])))) as client:
        assert client.get("/playground").status_code == 200  # the shell: no data, no secret
        for path in ("/playground/config", "/voices"):
            refused = client.get(path)
            assert refused.status_code == 401, path
            assert refused.json()["error"]["field"] == "Authorization"
            wrong = client.get(path, headers={"Authorization": "Bearer nope"})
            assert wrong.status_code == 401, path
        answer = client.get("/playground/config", headers={"Authorization": f"Bearer {TOKEN}"})
    assert answer.status_code == 200
    assert answer.json() == {
        "path": "/stream-audio",
        "sample_rates": [8000, 16000, 24000, 48000],
        "emotions": ["neutral", "happy", "sad"],
        "max_text_chars": 2000,
    }


async def test_a_reload_turns_the_playground_on(tmp_path: Path, plans: dict[str, Plan]) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(routing(playground=False, watch=False))
    app = create_app(config_path=str(path))
    async with live_server(app) as url, httpx.AsyncClient() as client:
        assert (await client.get(url + "/playground")).status_code == 404
        path.write_text(routing(playground=True, watch=False))
        assert await app.state.gateway.reload() is True
        assert (await client.get(url + "/playground")).status_code == 200
        assert (await client.get(url + "/playground/config")).status_code == 200


def test_the_page_ships_in_the_package() -> None:
    """The wheel carries the non-Python files of ``gateway/`` that pyproject's package data
    names: the page among them, or an installed gateway would fail on its first request.
    (The resampler's kernel is no package data: setup.py builds it from its C source.)"""
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    shipped = pyproject["tool"]["setuptools"]["package-data"]["gateway"]
    package = REPO / "gateway"
    built = tuple(importlib.machinery.EXTENSION_SUFFIXES)
    data = [
        p.relative_to(package).as_posix()
        for p in package.rglob("*")
        if p.is_file() and p.suffix not in (".py", ".pyc", ".c") and not p.name.endswith(built)
    ]
    assert "front/playground.html" in data
    assert [name for name in data if not any(fnmatch.fnmatch(name, g) for g in shipped)] == []


# ---------------------------------------------------------------- in Chromium


def _installed(name: str, package: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    message = f"{name} is not installed (apt-get install {package})"
    if in_ci():
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    """One headless Chromium for the module (each test opens its own gateway, its own origin)."""
    chromium = _installed("chromium", "chromium")
    chromedriver = _installed("chromedriver", "chromium-driver")
    options = Options()
    options.binary_location = chromium
    for argument in (
        "--headless=new",
        "--no-sandbox",  # containers and CI runners lack the user namespaces it needs
        "--disable-dev-shm-usage",
        "--autoplay-policy=no-user-gesture-required",
        "--window-size=900,1000",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=chromedriver))
    try:
        yield driver
    finally:
        driver.quit()


@contextlib.asynccontextmanager
async def gateway(file: str | None = None, **server: Any) -> AsyncIterator[str]:
    """A gateway on loopback serving ``file`` (default: :func:`routing` with ``server``)."""
    async with live_server(create_app(parse_config(file or routing(**server)))) as url:
        yield url


class Page:
    """The playground in the browser, driven from the test's event loop (every WebDriver call
    blocks, so it runs in a thread while the gateway serves in this loop)."""

    def __init__(self, driver: webdriver.Chrome) -> None:
        self.driver = driver

    async def call(self, function: Callable[..., T], *args: Any) -> T:
        return await asyncio.to_thread(function, *args)

    async def open(self, url: str) -> None:
        await self.call(self.driver.get, url + "/playground")

    async def wait_for_state(self, *states: str) -> str:
        def settled(driver: WebDriver) -> str | None:
            state = driver.find_element(By.ID, "result").get_attribute("data-state")
            return state if state in states else None

        wait = WebDriverWait(self.driver, WAIT, poll_frequency=0.05)
        result: str = await self.call(wait.until, settled)
        return result

    async def wait_for_figure(self, figure: str, value: str) -> None:
        """Until ``data-<figure>`` of ``#result`` reads ``value``."""

        def reached(driver: WebDriver) -> bool:
            element = driver.find_element(By.ID, "result")
            return element.get_attribute(f"data-{figure}") == value

        wait = WebDriverWait(self.driver, WAIT, poll_frequency=0.05)
        await self.call(wait.until, reached)

    async def result(self) -> dict[str, str]:
        """The answer's figures as the page records them (``data-*`` of ``#result``)."""
        script = "return Object.assign({}, document.getElementById('result').dataset)"
        found: dict[str, str] = await self.call(self.driver.execute_script, script)
        return found

    async def text_of(self, element_id: str) -> str:
        return await self.call(lambda: self.driver.find_element(By.ID, element_id).text)

    async def class_of(self, element_id: str) -> str:
        element = await self.call(self.driver.find_element, By.ID, element_id)
        return await self.call(lambda: element.get_attribute("class") or "")

    async def options(self, element_id: str) -> list[str]:
        def values() -> list[str]:
            select = Select(self.driver.find_element(By.ID, element_id))
            return [str(option.get_attribute("value")) for option in select.options]

        return await self.call(values)

    async def selected(self, element_id: str) -> str:
        def value() -> str:
            return str(self.driver.find_element(By.ID, element_id).get_attribute("value"))

        return await self.call(value)

    async def pick(self, element_id: str, value: str) -> None:
        await self.call(
            lambda: Select(self.driver.find_element(By.ID, element_id)).select_by_value(value)
        )

    async def type(self, element_id: str, text: str) -> None:
        def typed() -> None:
            element = self.driver.find_element(By.ID, element_id)
            element.clear()
            element.send_keys(text)

        await self.call(typed)

    async def click(self, element_id: str) -> None:
        await self.call(lambda: self.driver.find_element(By.ID, element_id).click())

    async def console_errors(self) -> list[str]:
        """What the page logged as errors or warnings since the last call (the log is drained)."""
        entries = await self.call(self.browser_log)
        return [entry["message"] for entry in entries if entry["level"] in ("SEVERE", "WARNING")]

    def browser_log(self) -> list[dict[str, Any]]:
        """The console's entries since the last read (reading drains them)."""
        entries: list[dict[str, Any]] = self.driver.execute("getLog", {"type": "browser"})["value"]
        return entries

    async def speak(self, voice: str, text: str, rate: int, emotion: str = "") -> dict[str, str]:
        await self.pick("voice", voice)
        await self.pick("rate", str(rate))
        await self.pick("emotion", emotion)
        await self.type("text", text)
        await self.click("speak")
        assert await self.wait_for_state("done", "error", "stopped") == "done"
        return await self.result()


@pytest.fixture
def gateway_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """The gateway's request log lines, captured (they are written at info)."""
    caplog.set_level(logging.INFO, logger="gateway")
    return caplog


@pytest.fixture
def page(browser: webdriver.Chrome) -> Iterator[Page]:
    page = Page(browser)
    page.browser_log()  # drained: what an earlier test left is not this test's
    yield page
    browser.get("about:blank")  # the page stops its audio and its requests


async def test_the_page_lists_the_voices_and_plays_a_synthesis_while_it_streams(
    page: Page, plans: dict[str, Plan], gateway_log: pytest.LogCaptureFixture
) -> None:
    text = "Thanks for calling, how can I help?"
    async with gateway() as url:
        await page.open(url)
        assert await page.wait_for_state("ready", "error", "unauthorized") == "ready"
        # Every routed voice that can be picked as such (a pattern is a family, not a voice).
        assert await page.options("voice") == ["joe", "backup", "broken", "slow"]
        assert await page.selected("voice") == "joe"  # the default voice
        assert await page.options("rate") == ["8000", "16000", "24000", "48000"]
        assert await page.options("emotion") == ["", "neutral", "happy", "sad"]

        first = await page.speak("joe", text, 16000, emotion="happy")
        # Half a second of the provider's 24 kHz audio, resampled to the 16 kHz asked for.
        assert int(first["bytes"]) == 16000
        assert int(first["samples"]) == 8000
        # Every sample went through Web Audio: scheduled as AudioBuffers at 16 kHz.
        assert int(first["scheduled"]) == 8000
        # ... and played out: every buffer ended on the audio clock.
        await page.wait_for_figure("played", "8000")
        assert await page.text_of("length") == "0.50 s (8000 samples at 16000 Hz)"
        assert first["voice"] == "joe" and await page.class_of("answered") == ""
        assert first["cache"] == "miss"
        assert float(first["ttfb"]) > 0
        request_id = await page.text_of("request-id")
        assert request_id.startswith("playground-")
        line = await log_line(gateway_log, request_id)
        assert "voice=joe sample_rate=16000" in line and "Emotion=happy" in line
        assert "status=200" in line and "end=complete" in line
        job = plans["p"].jobs[-1]
        assert (job.text, job.emotion) == (text, "happy")

        again = await page.speak("joe", text, 16000, emotion="happy")
        assert again["cache"] == "hit"
        assert (again["bytes"], again["scheduled"]) == ("16000", "8000")
        assert len(plans["p"].jobs) == 1  # the hit reached no provider

        native = await page.speak("backup", "No cache on this one.", 24000)
        assert native["cache"] == ""
        assert await page.text_of("cache") == "not cached"
        assert int(native["bytes"]) == CHUNKS * len(CHUNK)  # at its own rate: byte for byte

        screenshot = os.environ.get("PLAYGROUND_SCREENSHOT")
        if screenshot:
            await page.speak("joe", text, 16000, emotion="happy")
            await page.call(page.driver.save_screenshot, screenshot)
        assert await page.console_errors() == []


async def test_a_crafted_voice_name_is_shown_as_text(page: Page, plans: dict[str, Plan]) -> None:
    crafted = '<img src=x onerror="document.title=1">'
    file = json.loads(routing())
    file["voices"][crafted] = {"provider": "p"}
    async with gateway(json.dumps(file)) as url:
        await page.open(url)
        await page.wait_for_state("ready")
        assert crafted in await page.options("voice")
        assert await page.call(page.driver.find_elements, By.TAG_NAME, "img") == []
        answer = await page.speak(crafted, "Just text.", 24000)
        assert answer["voice"] == crafted  # X-Voice, percent-encoded on the wire, decoded
        assert await page.text_of("answered") == crafted
        assert await page.call(lambda: page.driver.title) == "TTS gateway · playground"
        assert await page.console_errors() == []


async def test_a_fallback_is_marked(page: Page, plans: dict[str, Plan]) -> None:
    async with gateway() as url:
        await page.open(url)
        await page.wait_for_state("ready")
        answer = await page.speak("broken", "Who answers?", 8000)
        assert answer["voice"] == "backup"
        assert await page.text_of("answered") == "backup (fallback for broken)"
        assert await page.class_of("answered") == "fallback"
        assert int(answer["samples"]) == 4000 == int(answer["scheduled"])
        assert len(plans["down"].jobs) >= 1  # the voice picked was tried first
        assert await page.console_errors() == []


async def test_an_error_shows_the_gateways_message(page: Page, plans: dict[str, Plan]) -> None:
    async with gateway() as url:
        await page.open(url)
        await page.wait_for_state("ready")
        await page.pick("voice", "joe")
        await page.type("text", "  !!  ")
        await page.click("speak")
        assert await page.wait_for_state("done", "error") == "error"
        async with httpx.AsyncClient() as client:
            direct = await client.post(
                url + "/stream-audio",
                json={"Text": "  !!  ", "VoiceId": "joe", "SampleRate": 24000, "ExtendData": ""},
            )
        assert direct.status_code == 400
        assert await page.text_of("status") == direct.json()["error"]["message"]
        assert await page.class_of("status") == "error"
        assert not plans["p"].jobs


async def test_the_decoder_carries_an_odd_byte_across_chunks(
    page: Page, plans: dict[str, Plan]
) -> None:
    values = [(i * 2749) % 65536 - 32768 for i in range(600)]  # every byte pattern, signs
    pcm = np.array(values, dtype="<i2").tobytes()
    cuts = [0, 1, 4, 7, 7, 8, 301, 302, 999, 1000, 1001, len(pcm)]  # odd, even, empty pieces
    chunks = [list(pcm[a:b]) for a, b in itertools.pairwise(cuts)]
    script = """
        const pcm = new window.ttsPlayground.Pcm();
        const out = [];
        for (const chunk of arguments[0]) {
            for (const x of pcm.push(Uint8Array.from(chunk))) out.push(Math.round(x * 32768));
        }
        return out;
    """
    async with gateway() as url:
        await page.open(url)
        await page.wait_for_state("ready")
        decoded = await page.call(page.driver.execute_script, script, chunks)
    assert decoded == values


async def test_stop_aborts_the_stream_and_the_gateway_lets_go(
    page: Page, plans: dict[str, Plan], gateway_log: pytest.LogCaptureFixture
) -> None:
    held = plans["held"]
    async with gateway() as url:
        await page.open(url)
        await page.wait_for_state("ready")
        await page.pick("voice", "slow")
        await page.type("text", "This one never ends.")
        await page.click("speak")
        await page.wait_for_state("streaming")
        # Heard while it streams: the first chunk plays out while the stream is still open.
        await page.wait_for_figure("played", str(len(CHUNK) // 2))
        assert not held.closed  # the provider holds its stream open
        assert (await page.result())["state"] == "streaming"
        await page.click("stop")
        assert await page.wait_for_state("stopped", "done", "error") == "stopped"
        request_id = await page.text_of("request-id")
        line = await log_line(gateway_log, request_id)  # written once the gateway ended it
        assert "end=client_disconnect" in line
        assert len(held.closed) == 1  # the hang-up closed the provider's stream
        assert int((await page.result())["scheduled"]) == len(CHUNK) // 2


async def test_with_tokens_the_page_asks_for_one_and_sends_it(
    page: Page, plans: dict[str, Plan], gateway_log: pytest.LogCaptureFixture
) -> None:
    async with gateway(tokens=[{"name": "studio", "token": TOKEN}]) as url:
        await page.open(url)
        assert await page.wait_for_state("ready", "unauthorized", "error") == "unauthorized"
        assert await page.options("voice") == []
        assert "needs a token" in await page.text_of("status")
        # The only errors are the refused calls (the browser logs a 401 as a failed load).
        refused = await page.console_errors()
        assert refused and all("401" in message for message in refused)

        await page.type("token", TOKEN)
        await page.click("use-token")
        assert await page.wait_for_state("ready", "unauthorized", "error") == "ready"
        assert await page.options("voice") == ["joe", "backup", "broken", "slow"]
        answer = await page.speak("backup", "With a token.", 24000)
        assert int(answer["bytes"]) == CHUNKS * len(CHUNK)
        line = await log_line(gateway_log, await page.text_of("request-id"))
        assert "status=200" in line
        stored = await page.call(
            page.driver.execute_script,
            "return sessionStorage.getItem('tts-gateway.playground.token')",
        )
        assert stored == TOKEN
        assert await page.console_errors() == []
        async with httpx.AsyncClient() as client:  # the same calls, without the token
            assert (await client.get(url + "/playground/config")).status_code == 401
            assert (await client.get(url + "/voices")).status_code == 401
            bare = {"Text": "Hello.", "VoiceId": "joe", "SampleRate": 24000, "ExtendData": ""}
            assert (await client.post(url + "/stream-audio", json=bare)).status_code == 401
