"""Helpers for the daemon's long-running background loops: cancelling them so that they stop.

On Python 3.11 a cancellation can be lost: ``asyncio.wait_for`` returns its inner result instead of raising
``CancelledError`` when the cancellation arrives as the inner future completes (CPython gh-86296, fixed in
3.12 by rewriting ``wait_for`` on ``asyncio.timeout``). redis-py wraps every command it sends in
``wait_for`` when a socket timeout is set, so a task cancelled in the middle of a Redis call often carries
on as if nothing happened -- measured here, one cancellation in seven during a loop of commands. The task
still *knows* it was cancelled (:meth:`asyncio.Task.cancelling` stays above zero), which is what these
helpers build on:

* loops call :func:`checkpoint` at the top of every iteration (or :func:`pause` between attempts), so a
  swallowed cancellation ends them at the next turn instead of never;
* :func:`wait_event` waits with ``asyncio.timeout``, which does not lose a cancellation, instead of
  ``wait_for``;
* :func:`cancel_and_wait` delivers the cancellation again until the task has stopped.

And one for passes over every room: :func:`in_turns` lets the event loop run other work every
:data:`TURN` rooms, so that a pass over a thousand rooms does not hold it for tens of milliseconds.

Soak finding: room workers whose tasks swallowed their cancellation kept reporting beside their successor
(events in two batches), held up the room's new worker for the 5 s ``cancel_and_wait`` gave them (750
simulated seconds at 150x: the waiting events aged past ``report_max_age_s`` and were dropped), and were
then left running for ever.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from typing import TypeVar

import structlog

T = TypeVar("T")

#: Items :func:`in_turns` hands out between two turns of the event loop.
TURN = 100

#: How often :func:`cancel_and_wait` delivers the cancellation again to a task that has not stopped.
REDELIVER_S = 0.05


def being_cancelled() -> bool:
    """Whether the current task has a pending cancellation.

    A client library may turn a ``CancelledError`` raised mid-command into its own error, or lose it (see
    the module docstring); a loop that carries on would never stop. Loops check this and re-raise.
    """
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def checkpoint() -> None:
    """Raise ``CancelledError`` if the current task was cancelled and something swallowed it."""
    if being_cancelled():
        raise asyncio.CancelledError


async def pause(seconds: float) -> None:
    """``asyncio.sleep`` for loops: raises CancelledError first if a cancellation was swallowed meanwhile."""
    checkpoint()
    await asyncio.sleep(seconds)


async def in_turns(items: Iterable[T], turn: int = TURN) -> AsyncIterator[T]:
    """``items``, yielding to the event loop after every ``turn`` of them. Measured (the SoftSugar
    benchmark, 1,000 live rooms): passes over every room held the loop up to 13 ms at a time, and a
    comment's reply waited behind them. Iterate over a snapshot (a list): other work runs in between."""
    for index, item in enumerate(items):
        if index and index % turn == 0:
            await asyncio.sleep(0)
        yield item


async def wait_event(event: asyncio.Event, timeout_s: float | None) -> bool:
    """Wait until ``event`` is set, at most ``timeout_s`` real seconds (None: no limit); whether it is set.

    ``asyncio.timeout``, not ``asyncio.wait_for``: on Python 3.11 the latter loses a cancellation that
    arrives as the event is set."""
    checkpoint()
    if event.is_set():
        return True
    try:
        async with asyncio.timeout(timeout_s):
            await event.wait()
    except TimeoutError:
        return event.is_set()
    return True


async def cancel_and_wait(task: asyncio.Task[object] | None, timeout_s: float = 5.0) -> None:
    """Cancel ``task`` and wait for it to stop -- delivering the cancellation again every
    :data:`REDELIVER_S` while it runs on (a library lost it), for at most ``timeout_s``. A task that has
    not stopped by then is left behind and logged."""
    if task is None or task.done():
        return
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not task.done():
        remaining = deadline - loop.time()
        if remaining <= 0:
            structlog.get_logger(__name__).warning(
                "background task did not stop in time", task=task.get_name()
            )
            return
        task.cancel()
        await asyncio.wait({task}, timeout=min(REDELIVER_S, remaining))
