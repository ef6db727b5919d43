"""End to end with the sandbox: a simulated audience → reports → the vendor's rules → replies inserted,
played and finished; nothing lost, nothing inserted twice."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path
from typing import Any

from tests.interaction.conftest import POLICY, ROOM, audience, comment, ingest, live_room, until


async def test_audience_to_replies_end_to_end(make_settings: Any, tmp_path: Path) -> None:
    rng = random.Random(11)
    policy = {**POLICY, "dedup_window_s": 0, "gift_thanks": None}  # the vendor's own rule thanks gifts
    async with live_room(
        make_settings, tmp_path, policy=policy, report_window_ms=100, reply_in_flight=2, reply_max_pending=100
    ) as (
        daemon,
        box,
        job_id,
    ):
        job = box.world.jobs[job_id]
        sent: list[dict[str, Any]] = []
        for i in range(240):
            user = {"userId": f"v{i}", "name": f"viewer{i}"}
            kind = rng.random()
            if kind < 0.15:
                sent.append(comment(f"什么时候发货 #{i}", user=f"v{i}"))  # our rule
            elif kind < 0.25:
                sent.append(comment(f"这个多少钱 #{i}", user=f"v{i}"))  # the vendor's SYSTEM_REPLY rule
            elif kind < 0.30:
                sent.append(comment(f"能用多久 #{i}？", user=f"v{i}"))  # the vendor's CALLBACK rule → us
            elif kind < 0.55:
                sent.append(comment(f"好看 #{i}", user=f"v{i}"))  # nobody answers
            elif kind < 0.65:
                sent.append({"type": "gift", "user": user, "gift": {"giftName": "rose", "giftNum": 1}})
            elif kind < 0.85:
                sent.append({"type": "like", "user": user})
            else:
                sent.append({"type": "viewers", "viewers": 100 + i})
        for start in range(0, len(sent), 16):
            await ingest(daemon, sent[start : start + 16])

        expected = Counter(
            (e["type"], e["user"]["userId"], e.get("text", "")) for e in sent if e["type"] != "viewers"
        )
        names = {"comment": 1, "like": 3, "gift": 4}

        def reported() -> Counter[tuple[Any, ...]]:
            got: Counter[tuple[Any, ...]] = Counter()
            for event in job.reported:
                if event["type"] == 6:
                    continue
                content = json.loads(event["content"])
                got[(event["type"], content["user"]["userId"], content.get("content", ""))] += 1
            return got

        want = Counter({(names[t], u, x): n for (t, u, x), n in expected.items()})

        async def all_reported() -> bool:
            return reported() == want

        await until(all_reported, 30)
        assert any(e["type"] == 6 for e in job.reported)  # viewer counts too (coalesced per batch)

        ours = [e for e in await daemon.store.events(ROOM, limit=5000) if e["kind"] == "reply_inserted"]

        async def ours_finished() -> bool:
            ids = {e["reply_id"] for e in ours}
            by_id = {i.command_id: i for i in job.inserts}
            done = all(by_id[i].state == "FINISHED" for i in ids if i in by_id)
            return done and not await audience(daemon).queue.in_flight(ROOM)

        # Everything we decided to say was inserted once, played and finished.
        async def settled() -> bool:
            nonlocal ours
            ours = [e for e in await daemon.store.events(ROOM, limit=5000) if e["kind"] == "reply_inserted"]
            pending = await audience(daemon).queue.pending(ROOM)
            return not pending and await ours_finished()

        await until(settled, 60)
        queued = [e for e in await daemon.store.events(ROOM, limit=5000) if e["kind"] == "reply_queued"]
        assert (
            len(ours) == len(queued) > 0
        )  # (a queue of 100: nothing dropped here; the bound has its own test)
        command_ids = [e["reply_id"] for e in ours]
        assert len(set(command_ids)) == len(command_ids)
        inserted_by_us = [i for i in job.inserts if i.command_id in set(command_ids)]
        assert len(inserted_by_us) == len(command_ids)  # the vendor saw each exactly once
        assert Counter(i.text for i in inserted_by_us) == Counter(e["text"] for e in ours)
        shipping = sum(1 for e in sent if "发货" in e.get("text", ""))
        assert sum(1 for i in inserted_by_us if "下单明天发货" in i.text) == shipping
        asked = [i for i in inserted_by_us if i.rule_index == "ask"]
        assert len(asked) == sum(1 for e in sent if "能用多久" in e.get("text", ""))
        # The vendor's own rules fired on what we reported (price answers, gift thanks).
        vendor = [i for i in job.inserts if i.rule_index in ("price", "gift")]
        assert {i.rule_index for i in vendor} == {"price", "gift"}
        finishes = [
            e
            for e in await daemon.store.events(ROOM, limit=5000)
            if e.get("event_type") == "REPLY_COMMAND_FINISH"
        ]
        finished_ids = {e["message"]["reply_id"] for e in finishes}
        assert set(command_ids) <= finished_ids
