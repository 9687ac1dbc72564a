"""The leased queue's pure parts: each user's backoff and dead-letter rule, batches, run keys."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from billing_pipelines.lib.alerts import channels as alerting
from billing_pipelines.lib.notifications import emails as notifications
from billing_pipelines.lib.pg.queue import (
    Dispatched,
    LeasedQueue,
    QueueTable,
    RetryPolicy,
    batch_run_key,
    chunks,
)
from billing_pipelines.lib.webhooks import queue as webhook_queue

HOUR = 3600.0


def test_webhook_backoff_doubles_from_30_seconds_to_a_6_hour_cap() -> None:
    policy = webhook_queue.events_policy(max_attempts=20)
    assert [policy.backoff_seconds(n) for n in range(0, 6)] == [0, 30, 60, 120, 240, 480]
    assert policy.backoff_seconds(10) == 30 * 2**9  # 4 h 16 min: still under the cap
    assert policy.backoff_seconds(11) == policy.backoff_seconds(19) == 6 * HOUR
    assert (policy.lease_seconds, policy.redispatch_seconds) == (600, 300)


def test_webhook_dead_letter_threshold_is_the_run_setting() -> None:
    policy = webhook_queue.events_policy(max_attempts=2)
    assert not policy.exhausted(1)
    assert policy.exhausted(2) and policy.exhausted(3)
    # Only the threshold is the run's: backoff and lease stay the queue's.
    assert policy.backoff_seconds(1) == webhook_queue.EVENTS_POLICY.backoff_seconds(1)
    assert policy.lease_seconds == webhook_queue.EVENTS_POLICY.lease_seconds


def test_outbox_backoff_doubles_from_a_minute_to_an_hour_and_dies_after_8() -> None:
    policy = notifications.OUTBOX.policy
    assert [policy.backoff_seconds(n) for n in range(1, 9)] == [
        60,
        120,
        240,
        480,
        960,
        1920,
        3600,
        3600,
    ]
    assert [policy.exhausted(n) for n in (7, 8)] == [False, True]
    assert notifications.OUTBOX.table.claimed_status == "sending"
    assert notifications.OUTBOX.table.owner is None  # the outbox records no claiming run


def test_chat_alerts_back_off_and_die_after_max_attempts() -> None:
    policy = alerting.CHAT_POLICY
    # 30 s, 1 min, 2, 4, 8, 16, then capped at 30 min.
    assert [policy.backoff_seconds(n) for n in range(1, 9)] == [
        30,
        60,
        120,
        240,
        480,
        960,
        1800,
        1800,
    ]
    assert alerting.CHAT_QUEUE.table.name == "alert_deliveries"
    assert alerting.CHAT_QUEUE.table.owner == "claimed_by"  # a claim is checked before recording
    assert policy.max_attempts == alerting.MAX_CHAT_ATTEMPTS
    assert not policy.exhausted(alerting.MAX_CHAT_ATTEMPTS - 1)
    assert policy.exhausted(alerting.MAX_CHAT_ATTEMPTS)


def test_chunks_keep_order_and_cap_the_batch_size() -> None:
    due = [Dispatched(i, 1) for i in range(1, 8)]
    batches = chunks(due, 3)
    assert [[d.id for d in b] for b in batches] == [[1, 2, 3], [4, 5, 6], [7]]
    assert chunks(due, 7) == [due]
    assert chunks([], 5) == []
    with pytest.raises(ValueError, match="at least 1"):
        chunks(due, 0)


def test_run_key_names_the_rows_and_changes_with_each_dispatch() -> None:
    batch = [Dispatched(12, 1), Dispatched(10, 1), Dispatched(11, 1)]
    key = batch_run_key("notifications", batch)
    prefix, span, count, digest = key.split(":")
    assert (prefix, span, count, len(digest)) == ("notifications", "10-12", "3", 12)
    assert key == batch_run_key("notifications", sorted(batch, key=lambda d: d.id))
    # One row dispatched again (its run never started): a new run is asked for.
    redispatched = [Dispatched(12, 2), Dispatched(10, 1), Dispatched(11, 1)]
    assert batch_run_key("notifications", redispatched) != key
    # Same rows, other queue: another run_key.
    assert batch_run_key("webhook_events", batch) != key
    with pytest.raises(ValueError, match="empty batch"):
        batch_run_key("notifications", [])


@dataclass(frozen=True)
class _NoAttempts:
    id: int


@dataclass(frozen=True)
class _Item:
    id: int
    attempts: int


def test_a_claimed_row_type_must_carry_the_key_and_attempts() -> None:
    table = QueueTable(name="t", claimed_status="busy", done_statuses=("done",), done_at="at")
    with pytest.raises(ValueError, match="attempts"):
        LeasedQueue(table, RetryPolicy(), _NoAttempts)
    assert LeasedQueue(table, RetryPolicy(), _Item).row_type is _Item


def test_table_and_column_names_are_quoted_identifiers_never_text() -> None:
    table = QueueTable(
        name='odd "queue"; DROP TABLE x',
        claimed_status="busy",
        done_statuses=("done",),
        done_at="finished at",
    )
    queue = LeasedQueue(table, RetryPolicy(), _Item)
    text = queue._sql("UPDATE {table} SET {done_at} = now() WHERE {key} = %s").as_string()
    assert text == 'UPDATE "odd ""queue""; DROP TABLE x" SET "finished at" = now() WHERE "id" = %s'
