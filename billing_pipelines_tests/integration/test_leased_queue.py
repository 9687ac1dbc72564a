"""The shared leased queue on the embedded PostgreSQL: dispatch, claim, lease, retry, dead letter.

It runs on a table of its own whose status words and column names differ from the billing
queues', so the queue is shown to depend on its table description only.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from threading import Barrier
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from billing_pipelines.lib.pg.queue import Dispatched, LeasedQueue, QueueTable, RetryPolicy

TABLE = QueueTable(
    name="work_items",
    claimed_status="leased",
    done_statuses=("done",),
    done_at="finished_at",
    owner="leased_by",
    outcome="note",
    pending_status="queued",
    failed_status="retrying",
    dead_status="buried",
    key="item_id",
    status="state",
    attempts="tries",
    next_attempt_at="due_at",
    claimed_at="leased_at",
    dispatched_at="handed_out_at",
    dispatch_count="handed_out",
    last_error="error",
)
POLICY = RetryPolicy(max_attempts=2, base_seconds=30, max_seconds=60, lease_seconds=600)


@dataclass(frozen=True)
class Item:
    """The columns a claim returns."""

    item_id: int
    tries: int
    body: str


@pytest.fixture
def queue_url(fresh_database_url: str) -> Iterator[str]:
    """A fresh billing database with a scratch queue table."""
    with psycopg.connect(fresh_database_url, autocommit=True) as conn:
        conn.execute(
            """
            CREATE TABLE work_items (
                item_id       bigserial PRIMARY KEY,
                body          text NOT NULL,
                state         text NOT NULL DEFAULT 'queued',
                tries         integer NOT NULL DEFAULT 0,
                due_at        timestamptz NOT NULL DEFAULT now(),
                leased_at     timestamptz,
                leased_by     text,
                handed_out_at timestamptz,
                handed_out    integer NOT NULL DEFAULT 0,
                error         text,
                note          text,
                finished_at   timestamptz
            )
            """
        )
    yield fresh_database_url


def _add(url: str, n: int) -> list[int]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "INSERT INTO work_items (body) SELECT 'item ' || g FROM generate_series(1, %s) g "
            "RETURNING item_id",
            (n,),
        ).fetchall()
    return sorted(int(r[0]) for r in rows)


def _row(url: str, item_id: int) -> dict[str, Any]:
    with psycopg.connect(url, row_factory=dict_row) as conn:
        row = conn.execute(
            "SELECT state, tries, leased_by, error, note, finished_at IS NOT NULL AS finished, "
            "extract(epoch FROM due_at - now()) AS due_in FROM work_items WHERE item_id = %s",
            (item_id,),
        ).fetchone()
    assert row is not None
    return row


def test_claim_fail_back_off_and_dead_letter(queue_url: str) -> None:
    queue = LeasedQueue(TABLE, POLICY, Item)
    first, second = _add(queue_url, 2)
    with psycopg.connect(queue_url, row_factory=dict_row) as conn:
        assert queue.select_for_dispatch(conn, limit=10) == [
            Dispatched(first, 1),
            Dispatched(second, 1),
        ]
        assert queue.select_for_dispatch(conn, limit=10) == []  # handed out: not again
        [item] = queue.claim(conn, [first], owner="run-1")
    assert item == Item(item_id=first, tries=1, body="item 1")
    assert _row(queue_url, first)["state"] == "leased"

    # A failure releases the claim and waits out the first backoff (30 s).
    with psycopg.connect(queue_url, row_factory=dict_row) as conn:
        assert queue.still_owned(conn, first, "run-1")
        assert (
            queue.record_failure(conn, first, item.tries, "boom " * 1000, owner="run-1")
            == "retrying"
        )
    row = _row(queue_url, first)
    assert (row["state"], row["tries"], row["leased_by"]) == ("retrying", 1, None)
    assert len(row["error"]) == 2000 and 25 < row["due_in"] <= 30
    with psycopg.connect(queue_url, row_factory=dict_row) as conn:
        assert queue.select_for_dispatch(conn, limit=10) == []  # backing off

    # Once due it is handed out again (a new dispatch count: a new run_key), and fails for good.
    with psycopg.connect(queue_url, row_factory=dict_row) as conn:
        conn.execute("UPDATE work_items SET due_at = now() WHERE item_id = %s", (first,))
        assert queue.select_for_dispatch(conn, limit=10) == [Dispatched(first, 2)]
        [item] = queue.claim(conn, [first], owner="run-2")
        assert item.tries == 2
        assert queue.record_failure(conn, first, item.tries, "boom", owner="run-2") == "buried"
    row = _row(queue_url, first)
    assert (row["state"], row["tries"], row["error"]) == ("buried", 2, "boom")
    with psycopg.connect(queue_url, row_factory=dict_row) as conn:
        conn.execute("UPDATE work_items SET due_at = now() - interval '1 day'")
        assert queue.select_for_dispatch(conn, limit=10) == []  # the dead stay dead
        assert queue.claim(conn, [first], owner="run-3") == []

        # The other row succeeds: its final status and outcome are recorded, its error cleared.
        [other] = queue.claim(conn, [second], owner="run-3")
        with pytest.raises(ValueError, match="not a final status"):
            queue.complete(conn, second, status="queued")
        queue.complete(conn, second, status="done", outcome="handled")
        assert queue.depth(conn) == {"buried": 1, "done": 1}
    row = _row(queue_url, second)
    assert (row["state"], row["tries"], row["note"], row["finished"]) == (
        "done",
        1,
        "handled",
        True,
    )


def test_two_owners_never_claim_the_same_row(queue_url: str) -> None:
    queue = LeasedQueue(TABLE, POLICY, Item)
    ids = _add(queue_url, 6)
    # An open transaction holds its claim: the other owner skips those rows without waiting.
    with psycopg.connect(queue_url) as a, psycopg.connect(queue_url, row_factory=dict_row) as b:
        mine = queue.claim(a, ids[:4], owner="run-a")
        theirs = queue.claim(b, ids, owner="run-b")
        b.commit()
        a.commit()
    assert [i.item_id for i in mine] == ids[:4]
    assert [i.item_id for i in theirs] == ids[4:]
    # Committed claims inside their lease are not claimable either.
    with psycopg.connect(queue_url, row_factory=dict_row) as conn:
        assert queue.claim(conn, ids, owner="run-c") == []
        assert queue.select_for_dispatch(conn, limit=10) == []

    # A lease older than lease_seconds is a dead run's: dispatched again, taken over, and the
    # old owner learns it lost the row.
    with psycopg.connect(queue_url, row_factory=dict_row) as conn:
        conn.execute(
            "UPDATE work_items SET leased_at = now() - interval '11 minutes' WHERE item_id = %s",
            (ids[0],),
        )
        assert queue.select_for_dispatch(conn, limit=10) == [Dispatched(ids[0], 1)]
        [taken] = queue.claim(conn, ids[:2], owner="run-c")
        assert (taken.item_id, taken.tries) == (ids[0], 2)
        assert not queue.still_owned(conn, ids[0], "run-a")
        assert queue.still_owned(conn, ids[0], "run-c")


def test_racing_owners_split_the_rows_between_them(queue_url: str) -> None:
    queue = LeasedQueue(TABLE, POLICY, Item)
    ids = _add(queue_url, 40)
    owners = [f"run-{n}" for n in range(4)]
    start = Barrier(len(owners))

    def claim_all(owner: str) -> list[int]:
        with psycopg.connect(queue_url, row_factory=dict_row) as conn:
            start.wait()
            return [i.item_id for i in queue.claim(conn, ids, owner=owner)]

    with ThreadPoolExecutor(len(owners)) as pool:
        claims = list(pool.map(claim_all, owners))
    claimed = [item_id for batch in claims for item_id in batch]
    assert sorted(claimed) == ids  # every row claimed once, by exactly one owner
    with psycopg.connect(queue_url, row_factory=dict_row) as conn:
        owned = conn.execute("SELECT item_id, leased_by FROM work_items").fetchall()
    by_owner = {o: sorted(r["item_id"] for r in owned if r["leased_by"] == o) for o in owners}
    assert by_owner == {o: sorted(c) for o, c in zip(owners, claims, strict=True)}


def test_a_claim_waits_for_the_backoff_whoever_asks(queue_url: str) -> None:
    """An op retry or a re-executed run names the row again: it is not claimed before it is due."""
    queue = LeasedQueue(TABLE, POLICY, Item)
    [row] = _add(queue_url, 1)
    with psycopg.connect(queue_url, row_factory=dict_row) as conn:
        [item] = queue.claim(conn, [row], owner="run-1")
        assert queue.record_failure(conn, row, item.tries, "smtp down", owner="run-1") == "retrying"
        # Asked again at once (same ids, another owner): nothing to claim, no attempt spent.
        assert queue.claim_due(conn, [row], owner="run-2").claimed == []
        assert queue.claim_due(conn, [row], owner="run-3").dead == []
    assert (_row(queue_url, row)["state"], _row(queue_url, row)["tries"]) == ("retrying", 1)
    # A pending row scheduled for later (due_at ahead) waits too.
    [later] = _add(queue_url, 1)
    with psycopg.connect(queue_url, row_factory=dict_row) as conn:
        conn.execute("UPDATE work_items SET due_at = now() + interval '5 minutes'")
        assert queue.claim(conn, [later, row], owner="run-4") == []
        # Once due, it is claimed with one more attempt.
        conn.execute("UPDATE work_items SET due_at = now() - interval '1 second'")
        taken = queue.claim(conn, [later, row], owner="run-4")
    assert sorted((i.item_id, i.tries) for i in taken) == sorted([(row, 2), (later, 1)])


def test_a_row_whose_process_keeps_dying_is_dead_lettered_at_claim(queue_url: str) -> None:
    """Each claim crashes (no failure recorded); the claim after the last attempt buries it."""
    queue = LeasedQueue(TABLE, POLICY, Item)  # max_attempts = 2
    [row, healthy] = _add(queue_url, 2)
    with psycopg.connect(queue_url, row_factory=dict_row) as conn:
        conn.execute("UPDATE work_items SET error = 'first crash' WHERE item_id = %s", (row,))
    for attempt, owner in enumerate(("run-1", "run-2"), start=1):
        with psycopg.connect(queue_url, row_factory=dict_row) as conn:
            claim = queue.claim_due(conn, [row], owner=owner)
            assert ([i.tries for i in claim.claimed], claim.dead) == ([attempt], [])
            # The process dies holding the claim; the lease runs out.
            conn.execute("UPDATE work_items SET leased_at = now() - interval '11 minutes'")
    with psycopg.connect(queue_url, row_factory=dict_row) as conn:
        # Dispatch still hands it out (someone must bury it); the claim dead-letters it.
        assert [d.id for d in queue.select_for_dispatch(conn, limit=10)] == [row, healthy]
        claim = queue.claim_due(conn, [row, healthy], owner="run-3")
    assert [i.item_id for i in claim.claimed] == [healthy]
    assert claim.dead == [Item(item_id=row, tries=2, body="item 1")]
    state = _row(queue_url, row)
    assert (state["state"], state["tries"], state["leased_by"]) == ("buried", 2, None)
    assert state["error"].startswith("attempts used up: 2 of 2")
    assert state["error"].endswith("last error: first crash")
    with psycopg.connect(queue_url, row_factory=dict_row) as conn:
        conn.execute("UPDATE work_items SET due_at = now() - interval '1 day'")
        assert queue.select_for_dispatch(conn, limit=10) == []  # the dead stay dead
        assert queue.claim_due(conn, [row], owner="run-4") == type(claim)([], [])


def test_a_failure_after_a_takeover_changes_nothing(queue_url: str) -> None:
    """The old owner's late failure must not overwrite the new owner's outcome, nor count."""
    queue = LeasedQueue(TABLE, POLICY, Item)
    [row] = _add(queue_url, 1)
    with psycopg.connect(queue_url, row_factory=dict_row) as conn:
        [old] = queue.claim(conn, [row], owner="run-old")
        conn.execute("UPDATE work_items SET leased_at = now() - interval '11 minutes'")
        [new] = queue.claim(conn, [row], owner="run-new")
        assert (old.tries, new.tries) == (1, 2)
        # While the new owner still holds it: the old owner's failure is refused.
        assert queue.record_failure(conn, row, old.tries, "late", owner="run-old") is None
        assert _state(conn, row) == ("leased", 2, "run-new", None)
        queue.complete(conn, row, status="done", outcome="handled by run-new")
        # After the new owner finished: still refused, `done` stays.
        assert queue.record_failure(conn, row, old.tries, "late", owner="run-old") is None
        # Even with the right owner name, a stale attempt number is not this claim.
        assert queue.record_failure(conn, row, old.tries, "late", owner="run-new") is None
        assert _state(conn, row) == ("done", 2, "run-new", None)
    with pytest.raises(ValueError, match="owner is required"):
        with psycopg.connect(queue_url) as conn:
            queue.record_failure(conn, row, 2, "x")


def test_a_table_without_owner_checks_the_claim_by_its_attempt(queue_url: str) -> None:
    """An owner-less queue (the outbox) still refuses a failure from a superseded claim."""
    table = TABLE.__class__(**{**TABLE.__dict__, "owner": None})
    queue = LeasedQueue(table, POLICY, Item)
    [row] = _add(queue_url, 1)
    with psycopg.connect(queue_url, row_factory=dict_row) as conn:
        [old] = queue.claim(conn, [row])
        conn.execute("UPDATE work_items SET leased_at = now() - interval '11 minutes'")
        [new] = queue.claim(conn, [row])
        # The old claim's failure while the new one holds the row: its attempt number is stale.
        assert queue.record_failure(conn, row, old.tries, "late") is None
        assert _state(conn, row)[:2] == ("leased", 2)
        queue.complete(conn, row, status="done")
        assert queue.record_failure(conn, row, old.tries, "late") is None
        assert _state(conn, row)[0] == "done"
        # The current claim's failure is recorded; a permanent one is dead at once.
        conn.execute("UPDATE work_items SET state = 'leased' WHERE item_id = %s", (row,))
        assert queue.record_failure(conn, row, new.tries, "bad address", permanent=True) == (
            "buried"
        )


def _state(conn: psycopg.Connection[Any], item_id: int) -> tuple[Any, ...]:
    row = conn.execute(
        "SELECT state, tries, leased_by, error FROM work_items WHERE item_id = %s", (item_id,)
    ).fetchone()
    assert row is not None
    return tuple(row.values()) if isinstance(row, dict) else tuple(row)


def test_a_claim_committed_with_earlier_work_starts_its_lease_at_the_claim(queue_url: str) -> None:
    """A run commits the next row's claim with the previous row's outcome: the lease is counted
    from the claim statement, not from the start of that longer transaction."""
    queue = LeasedQueue(TABLE, POLICY, Item)
    first, second = _add(queue_url, 2)
    with psycopg.connect(queue_url, row_factory=dict_row) as conn:
        [item] = queue.claim(conn, [first], owner="run-1")
        conn.commit()
        with conn.transaction():
            began = conn.execute("SELECT now() AS t").fetchone()
            conn.execute("SELECT pg_sleep(1.5)")  # the previous row's handler, taking a while
            queue.complete(conn, first, status="done", outcome="ok")
            assert [i.item_id for i in queue.claim(conn, [second], owner="run-1")] == [second]
        leased = conn.execute(
            "SELECT leased_at FROM work_items WHERE item_id = %s", (second,)
        ).fetchone()
    assert began is not None and leased is not None
    assert (leased["leased_at"] - began["t"]).total_seconds() >= 1.5
    assert item.tries == 1
