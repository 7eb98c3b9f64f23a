"""A front door's watch on its caller (:class:`gateway.front.door.HangUp`): the work runs in the
door's own task, and a hang-up cancels it from a watcher beside it; a cancellation from outside
(the server shutting down) is still one."""

from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.parse import quote

import pytest
from starlette.types import Message

from gateway.app import create_app
from gateway.config import parse_config
from gateway.front.custom_tts import CustomTTSDoor
from gateway.front.door import HangUp, header_value
from tests.support import (
    Plan,
    ScriptedProvider,
    eventually,
    live_server,
    provider_block,
    scripted_config,
)

#: Deadline for what a test waits for over a real connection (a loaded machine is slow).
PATIENCE = 30.0


def receiver(gone: asyncio.Event) -> Any:
    async def receive() -> Message:
        await gone.wait()
        return {"type": "http.disconnect"}

    return receive


async def test_a_hang_up_cancels_the_work_and_the_cancellation_is_taken_back() -> None:
    gone = asyncio.Event()

    async def work() -> tuple[bool, bool, int]:
        hang_up = HangUp(receiver(gone))
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            heard = hang_up.heard()
            task = asyncio.current_task()
            assert task is not None
            return heard, hang_up.cancelled_from_outside(), task.cancelling()
        finally:
            hang_up.stop()
        raise AssertionError("the work was not cancelled")

    task = asyncio.create_task(work())
    await asyncio.sleep(0.01)
    gone.set()
    assert await asyncio.wait_for(task, 5) == (True, False, 0)


async def test_a_cancellation_from_outside_is_not_a_hang_up() -> None:
    gone = asyncio.Event()  # never set: the caller stays
    told: list[tuple[bool, bool]] = []

    async def work() -> None:
        hang_up = HangUp(receiver(gone))
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            told.append((hang_up.heard(), hang_up.cancelled_from_outside()))
            raise
        finally:
            hang_up.stop()

    task = asyncio.create_task(work())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert told == [(False, True)]


async def test_a_hang_up_and_a_shutdown_together_stay_a_cancellation() -> None:
    gone = asyncio.Event()
    told: list[tuple[bool, bool]] = []

    async def work() -> None:
        hang_up = HangUp(receiver(gone))
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            told.append((hang_up.heard(), hang_up.cancelled_from_outside()))
            raise
        finally:
            hang_up.stop()

    task = asyncio.create_task(work())
    await asyncio.sleep(0.01)
    gone.set()
    await asyncio.sleep(0)  # the watcher hears it and cancels the work...
    task.cancel()  # ...and so does the server, before the work has run again
    with pytest.raises(asyncio.CancelledError):
        await task
    assert told == [(True, True)]


async def test_a_door_cancelled_by_a_shutdown_counts_its_request_as_cut_short() -> None:
    never = asyncio.Event()
    ScriptedProvider.plans.clear()
    ScriptedProvider.plans["pa"] = Plan([[never]])
    app = create_app(
        parse_config(
            scripted_config(voices={"a": {"provider": "pa"}}, providers={"pa": provider_block()})
        )
    )
    gateway = app.state.gateway
    await gateway.start()
    body = b'{"Text": "Hello there.", "SampleRate": 24000, "VoiceId": "a"}'
    sent: list[Message] = []
    delivered = False

    async def receive() -> Message:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        await never.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/stream-audio", "headers": []}
    try:
        door = asyncio.create_task(CustomTTSDoor(gateway)(scope, receive, send))
        assert await eventually(lambda: ScriptedProvider.plans["pa"].jobs)
        door.cancel()
        with pytest.raises(asyncio.CancelledError):
            await door
        registry = gateway.metrics.registry
        assert registry.get_sample_value("tts_requests_total", {"status": "499"}) == 1
        ended = {"reason": "client_disconnect"}
        assert registry.get_sample_value("tts_streams_ended_total", ended) == 1
        assert await eventually(lambda: ScriptedProvider.plans["pa"].closed)
        assert sent == []  # nothing was answered
    finally:
        await gateway.stop()


@pytest.mark.parametrize(
    "text",
    [
        "alloy",
        "zh-CN-XiaoxiaoNeural",
        "Chinese (Mandarin)_Reliable_Executive",
        "100%",
        "晓晓",
        "tab\there",
        "",
        "~!#$&'()*+,-./:;<=>?@[\\]^_`{|}",
        "\x7f\x00",
    ],
)
def test_a_header_value_is_the_text_percent_encoded_beyond_visible_ascii(text: str) -> None:
    visible = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) != "%")
    assert header_value(text) == quote(text, safe=visible).encode()
    assert all(0x21 <= byte < 0x7F for byte in header_value(text))


async def test_on_the_gateways_own_connections_a_hang_up_is_heard_without_a_watcher_task() -> None:
    """The connection layer tells the door of the hang-up (``Exchange.when_gone``): while a
    request waits for its provider, no task waits for ``http.disconnect`` beside it; the
    caller leaving still cancels the work, and the provider's stream is closed."""
    never = asyncio.Event()
    ScriptedProvider.plans.clear()
    plan = ScriptedProvider.plans["pa"] = Plan([[never]])
    yaml = scripted_config({"a": {"provider": "pa"}}, {"pa": provider_block()})
    async with live_server(create_app(parse_config(yaml))) as url:
        host, port = url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        payload = json.dumps({"Text": "Hello.", "SampleRate": 24000}).encode()
        writer.write(
            b"POST /stream-audio HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(payload), payload)
        )
        assert await eventually(lambda: bool(plan.jobs), PATIENCE)
        watchers = [
            task
            for task in asyncio.all_tasks()
            if getattr(task.get_coro(), "__qualname__", "") == "HangUp._watch"
        ]
        assert watchers == []
        writer.close()
        assert await eventually(lambda: plan.closed, PATIENCE)
        del reader
