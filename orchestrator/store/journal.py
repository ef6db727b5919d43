"""A local, fsync'd journal of callbacks accepted while Redis was unreachable.

The receiver answers 2xx for a callback only once it is durable: in Redis, or -- when Redis cannot take it
within its write timeout -- appended here and fsync'd. When Redis is back, :meth:`Journal.replay` hands the
entries, oldest first, to the same apply path; applying is idempotent (the callback id is remembered in
Redis), so an entry written both to Redis and here is applied once. Entries that still fail stay for the
next replay, in order.

One JSON document per line. The file belongs to one process: give each replica its own path. That is
enforced (:meth:`Journal.claim`): a second process naming the same path is refused at start -- the soak
found three replicas sharing the default relative path, one's replay rewriting the file while another
appended, and an acknowledged callback lost.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import structlog

log = structlog.get_logger(__name__)


class JournalInUse(RuntimeError):
    """Another process holds this journal: two replicas must never share one (each rewrites it on replay)."""


#: Journals this process holds (resolved path → the locked file's descriptor): a claim is the process's,
#: not one object's (a second flock from the same process on another descriptor would refuse itself).
_CLAIMS: dict[Path, int] = {}


class Journal:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = asyncio.Lock()

    def claim(self) -> None:
        """Hold the journal for this process (an exclusive lock on ``<path>.lock``, released when the process
        ends, however it ends). Raises JournalInUse when another process holds it, OSError when the
        directory cannot be written."""
        key = self.path.resolve()
        if key in _CLAIMS:
            return
        lock_path = self.path.with_name(self.path.name + ".lock")
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise JournalInUse(
                f"callbacks.journal_path {self.path} is in use by another process (pid {holder}): "
                "give each replica its own journal path"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        _CLAIMS[key] = fd

    def release(self) -> None:
        fd = _CLAIMS.pop(self.path.resolve(), None)
        if fd is not None:
            os.close(fd)

    async def append(self, entry: dict[str, Any]) -> None:
        """Write one entry and fsync it before returning. Raises OSError if the disk refuses."""
        line = json.dumps(entry, ensure_ascii=False, separators=(",", ":")) + "\n"
        async with self._lock:
            await asyncio.to_thread(self._append_sync, line.encode())

    def _append_sync(self, data: bytes) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)

    def pending(self) -> int:
        """How many entries wait for replay."""
        try:
            with self.path.open("rb") as fh:
                return sum(1 for line in fh if line.strip())
        except FileNotFoundError:
            return 0

    async def replay(self, apply: Callable[[dict[str, Any]], Awaitable[None]]) -> int:
        """Apply entries in order until one fails; keep the rest. Returns how many were applied."""
        async with self._lock:
            entries = await asyncio.to_thread(self._read)
            done = 0
            try:
                for entry in entries:
                    await apply(entry)
                    done += 1
            finally:
                if done:
                    await asyncio.to_thread(self._rewrite, entries[done:])
                    log.info("journal replayed", applied=done, remaining=len(entries) - done)
            return done

    def _read(self) -> list[dict[str, Any]]:
        try:
            lines = self.path.read_bytes().splitlines()
        except FileNotFoundError:
            return []
        entries = []
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                entries.append(json.loads(line))
            except ValueError:
                # A torn last line (crash mid-write, never acknowledged): skip it, keep the rest.
                log.warning("journal line unreadable; skipped", line=number, path=str(self.path))
        return entries

    def _rewrite(self, remaining: list[dict[str, Any]]) -> None:
        tmp = self.path.with_suffix(self.path.suffix + ".tmp")
        with tmp.open("wb") as fh:
            for entry in remaining:
                fh.write(json.dumps(entry, ensure_ascii=False, separators=(",", ":")).encode() + b"\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)
