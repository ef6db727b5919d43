"""Prometheus metrics of one daemon process, in their own registry (one per application instance)."""

from __future__ import annotations

import gc
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.callbacks_received = Counter(
            "orch_callbacks_received_total",
            "Vendor callbacks accepted, by event type and outcome.",
            ["event_type", "outcome"],
            registry=self.registry,
        )
        self.callbacks_rejected = Counter(
            "orch_callbacks_rejected_total",
            "Vendor callbacks refused, by reason (missing, malformed_time, too_old, in_future, "
            "bad_signature, replay, malformed_body, not_managed, unknown_profile).",
            ["reason"],
            registry=self.registry,
        )
        self.alerts = Counter(
            "orch_alerts_total",
            "Alert deliveries to webhooks, by outcome (sent, failed: refused or unreachable after retries).",
            ["outcome"],
            registry=self.registry,
        )
        self._received: dict[tuple[str, str], Counter] = {}
        self.journal_pending = Gauge(
            "orch_callback_journal_pending",
            "Callbacks journaled locally while Redis was unreachable, waiting for replay.",
            registry=self.registry,
        )

        self.redis_batches = Counter(
            "orch_callback_write_batches_total",
            "Redis round trips that wrote callbacks (group commit): callbacks / batches is the batch size.",
            registry=self.registry,
        )
        self.redis_batched_calls = Counter(
            "orch_callback_writes_total",
            "Callbacks written to Redis through the group commit.",
            registry=self.registry,
        )

        self.audience_events = Counter(
            "orch_audience_events_total",
            "Audience events by what became of them: reported, expired (too old to report), rejected "
            "(malformed, from the Redis ingest path), coalesced (superseded viewer counts), dropped (in a "
            "batch the vendor refused with 400).",
            ["outcome"],
            registry=self.registry,
        )
        self.report_batches = Counter(
            "orch_report_batches_total",
            "Live-event report calls, by outcome (ok, retry, dropped).",
            ["outcome"],
            registry=self.registry,
        )
        self.report_latency = Histogram(
            "orch_report_latency_seconds",
            "From an audience event's ingest to the vendor accepting the report that carried it.",
            buckets=(0.05, 0.1, 0.2, 0.25, 0.3, 0.35, 0.4, 0.5, 1, 2, 5, 10, 30),
            registry=self.registry,
        )
        self.reply_decision = Histogram(
            "orch_reply_decision_seconds",
            "From a comment's ingest to the decision of its reply (text, priority, play_type: the "
            "INSERT_PLAY_SCRIPT to send), for comments that get one.",
            buckets=(0.001, 0.002, 0.003, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 1, 5),
            registry=self.registry,
        )
        self.reply_queued = Histogram(
            "orch_reply_queued_seconds",
            "From a comment's ingest to its reply being in the room's reply queue in Redis.",
            buckets=(0.001, 0.002, 0.003, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 1, 5),
            registry=self.registry,
        )
        self.reply_sent = Histogram(
            "orch_reply_sent_seconds",
            "From a comment's ingest to its reply being sent to the vendor (the request handed over; the "
            "vendor's round trip excluded), for replies that answer an audience event.",
            buckets=(0.001, 0.002, 0.003, 0.004, 0.005, 0.0075, 0.01, 0.02, 0.05, 0.1, 0.5, 1, 5),
            registry=self.registry,
        )
        self.replies = Counter(
            "orch_replies_total",
            "Replies by outcome: queued, dropped (queue full), evicted, inserted, finished, timed_out, "
            "cleaned_up, failed, lost (the insert may or may not have happened: not repeated).",
            ["outcome"],
            registry=self.registry,
        )
        self.unanswered = Counter(
            "orch_audience_unanswered_total",
            "Audience events that got no reply, by reason: no_rule, blocked_user, forbidden_word, "
            "rate_limited, duplicate, queue_full, disabled, too_old, rejected (in review), not_answered.",
            ["reason"],
            registry=self.registry,
        )
        self.rooms_owned = Gauge(
            "orch_audience_rooms_owned",
            "Live rooms whose reporting and replies this replica owns (room leases held).",
            registry=self.registry,
        )

        self.gc_pause = Histogram(
            "orch_gc_pause_seconds",
            "Cyclic garbage collector pauses (the whole event loop stops), by generation.",
            ["generation"],
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1),
            registry=self.registry,
        )
        self._gc_started = 0.0

    def callback_received(self, counter: str, outcome: str) -> None:
        """Count one accepted callback under the counter its provider's codec named -- the vendor's type for
        the types it knows, one ``other`` for every type it does not (a signed callback's type is the
        sender's string: one series per distinct string would grow /metrics without bound). The labelled
        child is looked up once per pair, not per callback."""
        label = counter
        child = self._received.get((label, outcome))
        if child is None:
            child = self._received[(label, outcome)] = self.callbacks_received.labels(label, outcome)
        child.inc()

    def watch_gc(self) -> None:
        """Time every collection of the cyclic garbage collector (``gc.callbacks``)."""
        if self._on_gc not in gc.callbacks:
            gc.callbacks.append(self._on_gc)

    def unwatch_gc(self) -> None:
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._gc_started = time.perf_counter()
        else:
            self.gc_pause.labels(str(info.get("generation", "?"))).observe(
                time.perf_counter() - self._gc_started
            )

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
