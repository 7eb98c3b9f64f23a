"""Deadlines with one timer per loop (``gateway.deadlines``): the same outcomes as
``asyncio.timeout`` in every case the request path meets, on asyncio's own loop and on uvloop;
a timer only when a deadline is due before the one set; the heap of entries bounded."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import uvloop

from gateway import deadlines
from gateway.deadlines import SWEEP_FLOOR, deadline, deadline_at

LOOPS = {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}
#: Each implementation under test: (seconds) -> the block, (when) -> the block.
KINDS: dict[str, tuple[Callable[[float | None], Any], Callable[[float | None], Any]]] = {
    "asyncio": (asyncio.timeout, asyncio.timeout_at),
    "board": (deadline, deadline_at),
}


def run(loop_name: str, main: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    with asyncio.Runner(loop_factory=LOOPS[loop_name]) as runner:
        return runner.run(main())


async def scenario(kind: str, name: str) -> dict[str, Any]:
    """One case, as its outcome: what the block raised, whether the deadline says it expired,
    the task's cancellations left, and the seconds it took."""
    after, at = KINDS[kind]
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    started = loop.time()
    raised = "none"
    block: Any = None
    try:
        if name == "finishes_in_time":
            async with after(1.0) as block:
                await asyncio.sleep(0.01)
        elif name == "runs_over":
            async with after(0.03) as block:
                await asyncio.sleep(5)
        elif name == "past_when":
            async with at(loop.time() - 1) as block:
                await asyncio.sleep(5)
        elif name == "never":
            async with after(None) as block:
                await asyncio.sleep(0.02)
        elif name == "brought_forward":
            async with after(5.0) as block:
                block.reschedule(loop.time() + 0.02)
                await asyncio.sleep(5)
        elif name == "brought_to_now":
            async with after(5.0) as block:
                block.reschedule(loop.time())
                await asyncio.sleep(5)
        elif name == "put_off":
            async with after(0.02) as block:
                block.reschedule(loop.time() + 5)
                await asyncio.sleep(0.06)
        elif name == "lifted":
            async with after(0.02) as block:
                block.reschedule(None)
                await asyncio.sleep(0.06)
        elif name == "moved_twice_to_the_same_time":
            async with after(5.0) as block:
                when = loop.time() + 0.02
                block.reschedule(when)
                block.reschedule(when)
                await asyncio.sleep(5)
        elif name == "inner_expires":
            async with after(5.0) as block:
                try:
                    async with after(0.02):
                        await asyncio.sleep(5)
                except TimeoutError:
                    raised = "inner"
                await asyncio.sleep(0.01)
        elif name == "outer_expires":
            async with after(0.02) as block, after(5.0):
                await asyncio.sleep(5)
        elif name == "cancelled_from_outside":
            loop.call_later(0.02, task.cancel)
            async with after(5.0) as block:
                await asyncio.sleep(5)
        elif name == "cancelled_while_expiring":
            async with after(0.02) as block:
                try:
                    await asyncio.sleep(5)
                finally:
                    task.cancel()  # another cancellation as the deadline's lands
                    await asyncio.sleep(0)
        elif name == "error_inside":
            async with after(5.0) as block:
                raise ValueError("inside")
        else:  # pragma: no cover
            raise AssertionError(name)
    except TimeoutError:
        raised = "TimeoutError"
    except asyncio.CancelledError:
        raised = "CancelledError"
        task.uncancel()
    except ValueError:
        raised = "ValueError"
    return {
        "raised": raised,
        "expired": block.expired() if block is not None else None,
        "cancelling": task.cancelling(),
        "seconds": loop.time() - started,
    }


CASES = [
    "finishes_in_time",
    "runs_over",
    "past_when",
    "never",
    "brought_forward",
    "brought_to_now",
    "put_off",
    "lifted",
    "moved_twice_to_the_same_time",
    "inner_expires",
    "outer_expires",
    "cancelled_from_outside",
    "cancelled_while_expiring",
    "error_inside",
]


@pytest.mark.parametrize("loop_name", sorted(LOOPS))
@pytest.mark.parametrize("case", CASES)
def test_same_outcome_as_asyncio_timeout(loop_name: str, case: str) -> None:
    expected = run(loop_name, lambda: scenario("asyncio", case))
    got = run(loop_name, lambda: scenario("board", case))
    assert {k: v for k, v in got.items() if k != "seconds"} == {
        k: v for k, v in expected.items() if k != "seconds"
    }
    # Neither expires early; both end within the same few tens of milliseconds.
    assert got["seconds"] == pytest.approx(expected["seconds"], abs=0.05)
    if got["raised"] == "TimeoutError":
        assert got["expired"] is True


def test_the_cases_differ() -> None:
    """The cases are not all alike: a deadline that passes, one that does not, and a
    cancellation from elsewhere each end their own way."""
    outcomes = {case: run("uvloop", functools.partial(scenario, "board", case)) for case in CASES}
    assert outcomes["runs_over"]["raised"] == "TimeoutError"
    assert outcomes["runs_over"]["seconds"] >= 0.029  # timers keep whole milliseconds
    assert outcomes["finishes_in_time"]["raised"] == "none"
    assert outcomes["put_off"]["raised"] == "none"
    assert outcomes["lifted"]["raised"] == "none"
    assert outcomes["cancelled_from_outside"]["raised"] == "CancelledError"
    assert outcomes["cancelled_from_outside"]["expired"] is False
    assert outcomes["cancelled_while_expiring"]["raised"] == "CancelledError"
    assert outcomes["inner_expires"]["raised"] == "inner"  # caught inside the outer block
    assert outcomes["error_inside"]["raised"] == "ValueError"


def test_misuse_is_refused() -> None:
    async def main() -> list[str]:
        refused = []
        block = deadline(1.0)
        try:
            block.reschedule(None)
        except RuntimeError as error:
            refused.append(str(error))
        async with block:
            pass
        try:
            block.reschedule(None)
        except RuntimeError as error:
            refused.append(str(error))
        try:
            async with block:
                pass
        except RuntimeError as error:
            refused.append(str(error))
        return refused

    assert run("uvloop", main) == [
        "the deadline has not been entered",
        "the deadline's block is over",
        "the deadline has already been entered",
    ]


@contextmanager
def counted_timers(loop: asyncio.AbstractEventLoop) -> Iterator[list[float]]:
    """The times asked of ``loop.call_at`` meanwhile (asyncio's own loop, whose methods an
    instance attribute can stand in for)."""
    asked: list[float] = []
    original = loop.call_at

    def call_at(when: float, callback: Any, *args: Any, **kwargs: Any) -> asyncio.TimerHandle:
        asked.append(when)
        return original(when, callback, *args, **kwargs)

    loop.call_at = call_at  # type: ignore[method-assign, assignment]
    try:
        yield asked
    finally:
        del loop.call_at


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_timers_made(kind: str) -> None:
    """200 blocks of one length, one after another, make a timer each with asyncio.timeout,
    and one in all on a lane; 200 of lengths all different make a timer each either way (a
    lane each, then, past the lanes a loop keeps, a timer of their own)."""
    after = KINDS[kind][0]

    async def main() -> tuple[int, int]:
        loop = asyncio.get_running_loop()
        with counted_timers(loop) as same:
            for _ in range(200):
                async with after(30.0):
                    await asyncio.sleep(0)
        with counted_timers(loop) as different:
            for n in range(200):
                async with after(20.0 - n * 0.05):
                    await asyncio.sleep(0)
        return len(same), len(different)

    same, different = run("asyncio", main)
    assert same == (200 if kind == "asyncio" else 1)
    assert different == 200


def test_moved_deadline_has_a_timer_of_its_own() -> None:
    """A deadline brought forward expires at its new time, though its lane's timer is set for
    later; one put off does not expire when its lane's timer fires."""

    async def main() -> tuple[str, str, float]:
        loop = asyncio.get_running_loop()
        started = loop.time()
        forward = later = "none"
        try:
            async with deadline(0.2) as block:
                block.reschedule(loop.time() + 0.02)
                await asyncio.sleep(5)
        except TimeoutError:
            forward = "TimeoutError"
        took = loop.time() - started
        try:
            async with deadline(0.02) as block:
                block.reschedule(loop.time() + 0.2)
                await asyncio.sleep(0.1)
        except TimeoutError:
            later = "TimeoutError"
        return forward, later, took

    forward, later, took = run("uvloop", main)
    assert (forward, later) == ("TimeoutError", "none")
    assert 0.019 <= took < 0.15


def test_entries_left_behind_are_bounded() -> None:
    """One deadline in force, then 20 000 more of the same length entered and left, 50 at a
    time: the lane is swept back to what is in force whenever it doubles past the floor, and
    the first one still expires on time."""

    async def main() -> tuple[int, str, float]:
        loop = asyncio.get_running_loop()
        started = loop.time()
        biggest = 0
        outcome = "none"
        try:
            async with deadline(0.4):
                lane = deadlines._lane_for(loop, 0.4)
                assert lane is not None
                for _ in range(400):
                    blocks = [deadline(0.4) for _ in range(50)]
                    for block in blocks:
                        await block.__aenter__()
                    for block in blocks:
                        await block.__aexit__(None, None, None)
                    biggest = max(biggest, len(lane))
                await asyncio.sleep(5)
        except TimeoutError:
            outcome = "TimeoutError"
        return biggest, outcome, loop.time() - started

    biggest, outcome, took = run("uvloop", main)
    assert biggest <= SWEEP_FLOOR + 2 * 51 + 1
    assert outcome == "TimeoutError"
    assert 0.399 <= took < 1.0


def test_many_deadlines_expire_in_order() -> None:
    """Blocks of different lengths, entered in a shuffled order, each expire at or after their
    time, the shorter first."""
    lengths = [0.05, 0.01, 0.04, 0.02, 0.03, 0.06]

    async def one(seconds: float, ended: list[float]) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            async with deadline(seconds):
                await asyncio.sleep(5)
        except TimeoutError:
            assert loop.time() - started >= seconds - 0.002
            ended.append(seconds)

    async def main() -> list[float]:
        ended: list[float] = []
        await asyncio.gather(*(one(s, ended) for s in lengths))
        return ended

    assert run("uvloop", main) == sorted(lengths)


def test_blocks_ending_in_order_leave_nothing_behind() -> None:
    """Blocks of one length that end in the order they began are dropped from their lane as
    they end: after 1000 of them, 10 at a time, the lane holds none."""

    async def main() -> tuple[int, int]:
        loop = asyncio.get_running_loop()
        lane = None
        biggest = 0
        for _ in range(100):
            blocks = [deadline(7.5) for _ in range(10)]
            for block in blocks:
                await block.__aenter__()
            if lane is None:
                lane = deadlines._lane_for(loop, 7.5)
            assert lane is not None
            biggest = max(biggest, len(lane))
            for block in blocks:
                await block.__aexit__(None, None, None)
        assert lane is not None
        return biggest, len(lane)

    assert run("uvloop", main) == (10, 0)


def test_a_deadline_entered_late_still_expires_on_time() -> None:
    """A deadline made, then entered only after another of its length (due later) joined the
    lane, is not held behind that one: it expires at its own time."""

    async def main() -> tuple[float, float]:
        loop = asyncio.get_running_loop()
        made = loop.time()
        early = deadline(0.05)
        await asyncio.sleep(0.02)
        ended: list[float] = []

        async def later() -> None:
            try:
                async with deadline(0.05):
                    await asyncio.sleep(5)
            except TimeoutError:
                ended.append(loop.time() - made)

        other = asyncio.create_task(later())
        await asyncio.sleep(0)
        try:
            async with early:
                await asyncio.sleep(5)
        except TimeoutError:
            took = loop.time() - made
        await other
        return took, ended[0]

    took, other = run("uvloop", main)
    assert 0.049 <= took < 0.065  # held behind the other, it would end at ~0.07
    assert other >= 0.069


def test_a_lifted_deadline_at_the_end_of_its_lane_does_not_stop_the_next() -> None:
    """A deadline lifted (``reschedule(None)``) while its block runs stays in its lane until
    it comes to the front: another of its length entered meanwhile joins the lane all the
    same and expires on time, and the lifted one does not."""

    async def main() -> tuple[str, float, str]:
        loop = asyncio.get_running_loop()
        lifted_ended = asyncio.Event()
        outcome = "none"

        async def lifted() -> None:
            nonlocal outcome
            try:
                async with deadline(0.03) as block:
                    block.reschedule(None)
                    await lifted_ended.wait()
            except TimeoutError:
                outcome = "TimeoutError"

        holder = asyncio.create_task(lifted())
        await asyncio.sleep(0)
        started = loop.time()
        second = "none"
        try:
            async with deadline(0.03):
                await asyncio.sleep(5)
        except TimeoutError:
            second = "TimeoutError"
        took = loop.time() - started
        lifted_ended.set()
        await holder
        return second, took, outcome

    second, took, lifted_outcome = run("uvloop", main)
    assert second == "TimeoutError"
    assert 0.029 <= took < 0.2
    assert lifted_outcome == "none"
