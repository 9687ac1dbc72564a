"""A day split at a period boundary bills, over its parts, exactly what the whole day bills.

The boundary policy (README, "Billing periods that do not start at midnight") says what each
query id is worth, and every path that counts queries must say the same:

* the day rule: a tenant's query id is billed on a UTC day D when the tenant logged it as a
  query on D and logged it as no event of any kind on D - 1 (a copy logged across midnight is
  the same query: it counts on the day of its first event only). An id logged again after a
  whole day without it (two or more days later) is billed again: the look-back is one day;
* the instant: the id is billed at its first query event on D, so when a boundary or a
  lifecycle instant splits D, the part holding that instant bills it and no other part does,
  whatever the id did earlier on D (an ingest, a copy before the boundary);
* a period (any half-open [start, end)) bills the ids whose billing instant is inside it: the
  sum of its split days' parts and its whole days, never more, never less.

So the parts of a split day (`interval_queries`, what the push sends for a part) add up to the
whole day (`daily_usage`, what the push sends for a day without a boundary), the audit's truth
for a period (`period_truth`) is the sum of what the push sends for it, and the audit's per-day
warehouse count (`usage_audit.warehouse_queries`) equals daily usage. The expected values here
come from the policy applied in plain Python to the events the test inserted, and in the case
table also from hand-written answers; the SQL under test is never consulted for them.

Each test works in its own ClickHouse database on the real chDB bridge through the project's
warehouse path (clickhouse-connect, the warehouse migrations).
"""

from __future__ import annotations

import random
import uuid
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

import pytest
from clickhouse_connect.driver.client import Client

from billing_pipelines.lib.reconciliation import explain, usage_audit
from billing_pipelines.lib.usage import warehouse
from billing_pipelines.lib.usage.periods import interval_queries, period_truth
from billing_pipelines.lib.usage.tables import USAGE_EVENTS_COLUMNS
from billing_pipelines_tests.support import scratch_warehouse_url

DAY = date(2026, 3, 1)  # its day before is in February: another monthly partition
MIDNIGHT = datetime.combine(DAY, time.min, UTC)
NEXT_MIDNIGHT = MIDNIGHT + timedelta(days=1)
MS = timedelta(milliseconds=1)


@dataclass(frozen=True)
class Event:
    tenant: str
    query_id: str
    kind: str
    at: datetime

    def row(self) -> list[object]:
        return [uuid.uuid4(), self.query_id, self.tenant, self.at, self.kind, 50, 1, 7, self.at]


# ---- the policy, in plain Python ---------------------------------------------------------------


def billing_instants(events: Iterable[Event]) -> dict[tuple[str, str, date], datetime]:
    """Per (tenant, query id, UTC day) billed, the instant it is billed at (the day rule)."""
    days_logged: dict[tuple[str, str], set[date]] = defaultdict(set)
    first_query: dict[tuple[str, str, date], datetime] = {}
    for e in events:
        day = e.at.astimezone(UTC).date()
        days_logged[(e.tenant, e.query_id)].add(day)
        if e.kind == "query":
            key = (e.tenant, e.query_id, day)
            first_query[key] = min(first_query.get(key, e.at), e.at)
    return {
        (tenant, query_id, day): at
        for (tenant, query_id, day), at in first_query.items()
        if day - timedelta(days=1) not in days_logged[(tenant, query_id)]
    }


def policy_queries(events: Iterable[Event], tenant: str, start: datetime, end: datetime) -> int:
    """What the policy bills a tenant for [start, end)."""
    return sum(
        1 for (t, _, _), at in billing_instants(events).items() if t == tenant and start <= at < end
    )


# ---- the warehouse -----------------------------------------------------------------------------


@pytest.fixture
def client(embedded_services: dict[str, str]) -> Iterator[Client]:
    """A client on a new, migrated ClickHouse database of its own, dropped afterwards."""
    with scratch_warehouse_url(embedded_services["CLICKHOUSE_URL"], "split") as url:
        own = warehouse.connect(url)
        warehouse.ensure_usage_schema(own)
        yield own


def insert_shuffled(client: Client, events: list[Event], rng: random.Random) -> None:
    """Events in an order that is not their time order, in batches (several table parts)."""
    shuffled = list(events)
    rng.shuffle(shuffled)
    done = 0
    while done < len(shuffled):
        batch = shuffled[done : done + rng.choice([1, 5, 40])]
        done += len(batch)
        client.insert(
            "usage_events", [e.row() for e in batch], column_names=list(USAGE_EVENTS_COLUMNS)
        )


def daily_billed(client: Client, day: date) -> dict[str, int]:
    """What the push sends for a whole day, per tenant."""
    frame = warehouse.daily_usage(client, day)
    return dict(zip(frame["tenant_id"], frame["billable_queries"].astype(int), strict=True))


# ---- the edge cases, one tenant each -----------------------------------------------------------

BOUNDARIES = [
    pytest.param(timedelta(hours=14, minutes=30, seconds=17), id="14:30:17"),
    pytest.param(timedelta(hours=23, minutes=59, seconds=59), id="23:59:59"),
    pytest.param(timedelta(seconds=1), id="00:00:01"),
]


def edge_cases(boundary: datetime) -> dict[str, tuple[list[tuple[str, datetime]], str | None]]:
    """Per case: its events (kind, instant) and the part of DAY the policy bills it in ("head"
    before the boundary, "tail" from it, None when DAY bills nothing), written by hand."""
    head = MIDNIGHT + (boundary - MIDNIGHT) / 2  # inside the head, even a one-second one
    tail = boundary + (NEXT_MIDNIGHT - boundary) / 2
    head, tail = (t.replace(microsecond=t.microsecond // 1000 * 1000) for t in (head, tail))
    same_time_yesterday = boundary - timedelta(days=1)
    # On the day before, before the boundary's time of day (at its midnight for 00:00:01),
    # and after it.
    early_yesterday = max(same_time_yesterday - timedelta(hours=3), MIDNIGHT - timedelta(days=1))
    late_yesterday = min(same_time_yesterday + timedelta(hours=3), MIDNIGHT - MS)
    return {
        # An id an ingest logged the day before is a copy, whatever the kind: not billed again.
        "ingest_day_before_then_query_in_head": (
            [("embedding", MIDNIGHT - timedelta(hours=12)), ("query", head)],
            None,
        ),
        "ingest_day_before_then_query_in_tail": (
            [("embedding", MIDNIGHT - timedelta(hours=12)), ("query", tail)],
            None,
        ),
        # Logged the day before only in the hours before the boundary's time of day: the day
        # before is a whole UTC day, not the 24 hours before the boundary.
        "query_early_day_before_then_in_tail": (
            [("query", early_yesterday), ("query", tail)],
            None,
        ),
        "ingest_early_day_before_then_query_in_tail": (
            [("embedding", early_yesterday), ("query", tail)],
            None,
        ),
        "query_late_day_before_then_in_tail": ([("query", late_yesterday), ("query", tail)], None),
        "query_late_day_before_then_in_head": ([("query", late_yesterday), ("query", head)], None),
        # Across midnight into DAY: billed the day before, not on DAY.
        "query_across_midnight": ([("query", MIDNIGHT - MS), ("query", MIDNIGHT)], None),
        # Seen in the head and again in the tail: once, in the head.
        "query_in_head_and_again_in_tail": ([("query", head), ("query", tail)], "head"),
        "query_in_tail_logged_first_then_head_copy": (
            [("query", tail), ("query", head)],
            "head",
        ),
        # Copies within one part: once.
        "query_three_copies_in_tail": (
            [("query", tail), ("query", tail), ("query", tail + timedelta(seconds=0.25))],
            "tail",
        ),
        "query_two_copies_in_head": ([("query", head), ("query", head)], "head"),
        # Exactly at the boundary is from the boundary on; a millisecond before is before it.
        "query_at_the_boundary": ([("query", boundary)], "tail"),
        "query_a_millisecond_before_the_boundary": ([("query", boundary - MS)], "head"),
        "query_at_midnight": ([("query", MIDNIGHT)], "head"),
        "query_at_the_last_millisecond": ([("query", NEXT_MIDNIGHT - MS)], "tail"),
        # An ingest earlier the same day does not make the query a copy; the query's own
        # first event is the instant.
        "ingest_in_head_then_query_in_tail": ([("embedding", head), ("query", tail)], "tail"),
        "ingest_only": ([("embedding", head), ("embedding", tail)], None),
        # Two days before is beyond the one-day look-back: billed again.
        "query_two_days_before_then_in_tail": (
            [("query", MIDNIGHT - timedelta(days=2) + timedelta(hours=1)), ("query", tail)],
            "tail",
        ),
        # Logged again the day after: that does not change DAY.
        "query_in_tail_and_the_day_after": (
            [("query", tail), ("query", NEXT_MIDNIGHT + timedelta(hours=1))],
            "tail",
        ),
    }


@pytest.mark.parametrize("offset", BOUNDARIES)
def test_each_edge_case_is_billed_in_the_part_the_policy_names_and_parts_add_up_to_the_day(
    client: Client, offset: timedelta
) -> None:
    boundary = MIDNIGHT + offset
    cases = edge_cases(boundary)
    events = [
        Event(f"case-{name}", "q-edge", kind, at)
        for name, (logged, _) in cases.items()
        for kind, at in logged
    ]
    # The same id in another tenant's day before: ids are per tenant.
    events.append(Event("other-tenant", "q-edge", "query", MIDNIGHT - timedelta(hours=20)))
    insert_shuffled(client, events, random.Random(offset.seconds))
    whole_day = daily_billed(client, DAY)
    wanted: dict[str, tuple[object, ...]] = {}
    got: dict[str, tuple[object, ...]] = {}
    for name, (_, billed_in) in cases.items():
        tenant = f"case-{name}"
        expected = (int(billed_in == "head"), int(billed_in == "tail"))
        wanted[name] = (expected, expected, sum(expected))
        got[name] = (
            # The Python policy agrees with the hand-written answer...
            (
                policy_queries(events, tenant, MIDNIGHT, boundary),
                policy_queries(events, tenant, boundary, NEXT_MIDNIGHT),
            ),
            # ...and so do the warehouse's parts and its whole day.
            (
                interval_queries(client, tenant, MIDNIGHT, boundary),
                interval_queries(client, tenant, boundary, NEXT_MIDNIGHT),
            ),
            whole_day.get(tenant, 0),
        )
    assert got == wanted
    # The audit's per-day warehouse count says what daily usage says, every day of the data.
    tenants = sorted({e.tenant for e in events})
    audited = usage_audit.warehouse_queries(
        client, tenants, DAY - timedelta(days=2), DAY + timedelta(days=1)
    )
    for d in (DAY - timedelta(days=2) + timedelta(days=i) for i in range(4)):
        billed = daily_billed(client, d)
        for tenant in tenants:
            start = datetime.combine(d, time.min, UTC)
            policy = policy_queries(events, tenant, start, start + timedelta(days=1))
            assert audited.get((tenant, d), 0) == billed.get(tenant, 0) == policy, (tenant, d)


@pytest.mark.parametrize("offset", BOUNDARIES)
def test_a_period_starting_and_ending_inside_days_is_its_parts_and_whole_days(
    client: Client, offset: timedelta
) -> None:
    """A period [DAY + offset, DAY + 2 days + offset): its audit truth, its own count, and the
    push's parts (tail of its first day, a whole day, head of its last day) all agree with the
    policy, with copies across both boundaries and across the midnights inside it."""
    start = MIDNIGHT + offset
    end = start + timedelta(days=2)
    tenant = "t-period"
    events = [
        Event(tenant, "before-start-copy-after", "query", start - MS),  # billed before
        Event(tenant, "before-start-copy-after", "query", start + timedelta(seconds=2)),
        Event(tenant, "yesterday-early", "embedding", start - timedelta(days=1, hours=1)),
        Event(tenant, "yesterday-early", "query", start + timedelta(seconds=1)),
        Event(tenant, "in-first-day", "query", start),
        Event(tenant, "across-midnight", "query", NEXT_MIDNIGHT - MS),
        Event(tenant, "across-midnight", "query", NEXT_MIDNIGHT + MS),
        Event(tenant, "whole-day", "query", NEXT_MIDNIGHT + timedelta(hours=9)),
        Event(tenant, "gap", "query", NEXT_MIDNIGHT + timedelta(hours=1)),
        Event(tenant, "gap", "query", end - MS),  # a day without it between: billed again
        Event(tenant, "before-end-copy-after", "query", end - MS),
        Event(tenant, "before-end-copy-after", "query", end),
        Event(tenant, "at-end", "query", end),  # the next period's
    ]
    insert_shuffled(client, events, random.Random(7))
    expected = policy_queries(events, tenant, start, end)
    first_midnight = MIDNIGHT + timedelta(days=1) if offset else start
    last_midnight = datetime.combine(end.date(), time.min, UTC)
    pushed = interval_queries(client, tenant, start, first_midnight) if offset else 0
    d = first_midnight
    while d < last_midnight:
        pushed += daily_billed(client, d.date()).get(tenant, 0)
        d += timedelta(days=1)
    pushed += interval_queries(client, tenant, last_midnight, end)
    truth = period_truth(client, tenant, start, end)
    assert (truth.queries, interval_queries(client, tenant, start, end), pushed) == (
        expected,
        expected,
        expected,
    )
    # The boundary days' parts the audit names are the policy's parts too.
    assert (truth.head, truth.head_before) == (
        policy_queries(events, tenant, start, first_midnight),
        policy_queries(events, tenant, MIDNIGHT, start),
    )
    assert (truth.tail, truth.tail_after) == (
        policy_queries(events, tenant, last_midnight, end),
        policy_queries(events, tenant, end, last_midnight + timedelta(days=1)),
    )


# ---- the property: random events, random boundaries ---------------------------------------------


def random_events(rng: random.Random, first_day: date, days: int) -> list[Event]:
    """Ids logged one to four times: milliseconds, hours, a day or several days apart, as
    queries, ingests or both, by tenants that share ids."""
    events: list[Event] = []
    start = datetime.combine(first_day, time.min, UTC)
    for tenant in ("alpha", "beta"):
        for i in range(rng.choice([30, 60, 90])):
            query_id = f"id-{rng.randrange(40 if tenant == 'beta' else 10_000)}-{i % 3}"
            at = start + rng.randrange(days * 86_400_000) * MS
            for _ in range(rng.choice([1, 1, 2, 4])):
                kind = rng.choice(["query", "query", "query", "embedding"])
                events.append(Event(tenant, query_id, kind, at))
                lag = rng.choice([0, 1, 1_000, 3_600_000, 23 * 3_600_000, 30 * 3_600_000])
                at += (lag + rng.choice([0, 0, 2 * 86_400_000])) * MS
    return events


def random_instant(rng: random.Random, day: date) -> datetime:
    """An instant of a day at a whole second, now and then at or next to a midnight."""
    second = rng.choice([0, 1, 86_399, rng.randrange(86_400), rng.randrange(86_400)])
    return datetime.combine(day, time.min, UTC) + timedelta(seconds=second)


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_random_periods_bill_the_policy_count_as_the_sum_of_their_parts(
    client: Client, seed: int
) -> None:
    rng = random.Random(seed)
    first_day = date(2025, 12, 28) + timedelta(days=rng.randrange(5))  # a year end nearby
    days = 5
    events = random_events(rng, first_day, days)
    insert_shuffled(client, events, rng)
    daily = {
        first_day + timedelta(days=i): daily_billed(client, first_day + timedelta(days=i))
        for i in range(days + 2)
    }
    for tenant in ("alpha", "beta"):
        for _ in range(4):
            a = random_instant(rng, first_day + timedelta(days=rng.randrange(days)))
            b = random_instant(rng, a.date() + timedelta(days=rng.randrange(0, 3)))
            start, end = min(a, b), max(a, b)
            expected = policy_queries(events, tenant, start, end)
            # The parts the push sends: days cut at the period's instants, whole days as days.
            pushed, cursor = 0, start
            while cursor < end:
                midnight = datetime.combine(cursor.date(), time.min, UTC)
                next_midnight = midnight + timedelta(days=1)
                if cursor == midnight and next_midnight <= end:
                    pushed += daily[cursor.date()].get(tenant, 0)
                else:
                    pushed += interval_queries(client, tenant, cursor, min(next_midnight, end))
                cursor = min(next_midnight, end)
            assert pushed == expected, (tenant, start, end)
            assert period_truth(client, tenant, start, end).queries == expected
        # `billing explain`'s warehouse count over whole days, bound and pasted as literals.
        explained = (start_day, end_day) = (
            datetime.combine(first_day + timedelta(days=rng.randrange(2)), time.min, UTC),
            datetime.combine(first_day + timedelta(days=rng.randrange(3, days + 2)), time.min, UTC),
        )
        pasted = client.query(explain.sql_literal(tenant, *explained)).result_rows[0][0]
        assert (explain.warehouse_count(client, tenant, *explained), int(pasted)) == (
            policy_queries(events, tenant, start_day, end_day),
            policy_queries(events, tenant, start_day, end_day),
        )
        # Every day: whole day = a random split of it = the policy = the audit's day count.
        audited = usage_audit.warehouse_queries(
            client, [tenant], first_day, first_day + timedelta(days=days + 1)
        )
        for day, billed in daily.items():
            cut = random_instant(rng, day)
            midnight = datetime.combine(day, time.min, UTC)
            parts = interval_queries(client, tenant, midnight, cut) + interval_queries(
                client, tenant, cut, midnight + timedelta(days=1)
            )
            whole = policy_queries(events, tenant, midnight, midnight + timedelta(days=1))
            assert (billed.get(tenant, 0), parts, audited.get((tenant, day), 0)) == (
                whole,
                whole,
                whole,
            ), (tenant, day, cut)
