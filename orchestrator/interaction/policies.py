"""The reply policies this replica's rooms use, kept in memory: the rooms file's default, and the named
policies rooms (or brands) choose, read from Redis (:mod:`orchestrator.store.policies`).

A reply is decided without awaiting anything (:meth:`RoomDesk.consider` runs on the ingest path), so the
policy a room names must be here before its comments arrive: the audience supervisor asks for the names of
its live rooms on every pass (:meth:`PolicyBook.want`). A saved policy reaches every replica within
seconds: the replica that saved it publishes ``policy_changed`` (pub/sub, at most once) and every replica
also compares versions every :data:`REFRESH_S` (what a missed message costs).

A room that names a policy that does not exist (deleted, or never saved) answers nothing -- never another
room's policy, nor the default: a brand's room must not speak another brand's FAQ.
"""

from __future__ import annotations

import asyncio
import contextlib

import structlog
from redis.exceptions import RedisError

from orchestrator.interaction.policy import PolicyConfig
from orchestrator.store.policies import PolicyStore
from orchestrator.store.reactions import Reactions
from orchestrator.tasks import being_cancelled, checkpoint

log = structlog.get_logger(__name__)

#: How often (real seconds) every replica compares the versions of the policies it holds with Redis's.
REFRESH_S = 3.0
#: What a room naming a missing policy answers with: nothing.
SILENT = PolicyConfig()


class PolicyBook:
    def __init__(self, store: PolicyStore, default: PolicyConfig) -> None:
        #: The rooms file's policy (``interaction.policy_file``), for rooms that name none; swapped on reload.
        self.default = default
        self._store = store
        self._held: dict[str, tuple[int, PolicyConfig]] = {}  # name → (version, policy)
        self._missing: set[str] = set()

    def policy_for(self, name: str | None) -> PolicyConfig:
        """The policy a room naming ``name`` (None: none) answers with, as this replica holds it now."""
        if not name:
            return self.default
        held = self._held.get(name)
        return held[1] if held is not None else SILENT

    def version_of(self, name: str) -> int | None:
        held = self._held.get(name)
        return held[0] if held is not None else None

    async def want(self, names: set[str]) -> None:
        """Hold these policies (read those not held yet); policies no longer wanted are let go. Raises
        RedisError."""
        for name in set(self._held) - names:
            del self._held[name]
        self._missing &= names
        await self._load(sorted(n for n in names if n not in self._held and n not in self._missing))

    async def want_also(self, name: str | None) -> None:
        """Hold ``name`` too (a room another replica owns, asked about here), until the next :meth:`want`
        lets it go. Raises RedisError."""
        if name and name not in self._held:
            await self._load([name])

    async def refresh(self, names: list[str] | None = None) -> None:
        """Read again the policies held (or ``names``) whose version changed in Redis. Raises RedisError."""
        wanted = sorted(set(self._held) | self._missing) if names is None else names
        current = await self._store.current_versions(wanted)
        changed = [n for n in wanted if current.get(n) != self.version_of(n)]
        await self._load(changed)

    async def _load(self, names: list[str]) -> None:
        for name in names:
            try:
                stored = await self._store.get(name)
                policy = None if stored is None else PolicyConfig.model_validate(stored.policy)
            except ValueError as exc:  # not a valid policy (written by hand): keep what is held
                log.error(
                    "reply policy in Redis is invalid; keeping the one held", policy=name, error=str(exc)
                )
                continue
            if stored is None or policy is None:
                if name not in self._missing:
                    log.warning(
                        "a room names a reply policy that does not exist; it answers nothing", policy=name
                    )
                self._held.pop(name, None)
                self._missing.add(name)
                continue
            self._missing.discard(name)
            if self.version_of(name) != stored.version:
                self._held[name] = (stored.version, policy)
                log.info("reply policy loaded", policy=name, version=stored.version)

    async def follow(self, reactions: Reactions) -> None:
        """Keep the held policies current, until cancelled: at once when a replica says one changed, and
        every :data:`REFRESH_S` in case that message was missed."""
        async with reactions.subscribe() as queue:
            while True:
                checkpoint()
                names: list[str] | None = None
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(REFRESH_S):
                        while True:
                            reaction = await queue.get()
                            if reaction.get("kind") == "policy_changed":
                                names = [str(reaction.get("policy", ""))]
                                break
                try:
                    if names is None:
                        await self.refresh()
                    elif names[0] in self._held or names[0] in self._missing:
                        await self.refresh(names)
                except RedisError as exc:
                    if being_cancelled():
                        raise
                    log.warning("cannot refresh reply policies", error=str(exc))
