"""Helpers for the daemon's long-running background loops."""

from __future__ import annotations

import asyncio

import structlog


def being_cancelled() -> bool:
    """Whether the current task has a pending cancellation.

    A client library may turn a ``CancelledError`` raised mid-command into its own error (redis-py does);
    a loop that catches that error and carries on would never stop. Loops check this and re-raise.
    """
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


async def pause(seconds: float) -> None:
    """``asyncio.sleep`` for loops: raises CancelledError first if a cancellation was swallowed meanwhile."""
    if being_cancelled():
        raise asyncio.CancelledError
    await asyncio.sleep(seconds)


async def cancel_and_wait(task: asyncio.Task[object] | None, timeout_s: float = 5.0) -> None:
    """Cancel ``task`` and wait for it -- at most ``timeout_s``: a task stuck in a library that swallowed
    the cancellation (redis-py can, mid-command) must not hang shutdown. A task that does not stop in time
    is left behind and logged."""
    if task is None or task.done():
        return
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=timeout_s)
    if not done:
        structlog.get_logger(__name__).warning("background task did not stop in time", task=task.get_name())
