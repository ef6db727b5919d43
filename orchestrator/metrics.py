"""Prometheus metrics of one daemon process, in their own registry (one per application instance)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest


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

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
