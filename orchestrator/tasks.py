"""Helpers for the daemon's long-running background loops."""

from __future__ import annotations

import asyncio


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
