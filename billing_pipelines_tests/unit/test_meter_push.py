"""The meter push's pure parts: outcome counts, batched confirmations, the run's verdict."""

from __future__ import annotations

from datetime import date

import pytest

from billing_pipelines.lib.metering.planning import (
    DELIVERED,
    FAILED,
    OUT_OF_WINDOW,
    DayTotal,
    DesiredDay,
    RefusedValue,
)
from billing_pipelines.lib.metering.push import (
    Confirmation,
    ConfirmBuffer,
    Outcomes,
    PushResult,
    refused_message,
)
from billing_pipelines.lib.stripe.meters import SendOutcome

DAY = date(2026, 3, 14)
METERS = [("queries", "rag_api_queries", "billable_queries"), ("tokens", "rag_tokens", "tokens")]


def test_outcomes_count_each_answer_and_sent_leaves_out_what_stripe_already_had() -> None:
    outcomes = Outcomes()
    for outcome in [
        SendOutcome(DELIVERED),
        SendOutcome(DELIVERED, duplicate=True),
        SendOutcome(DELIVERED),
        SendOutcome(FAILED, error="400 bad"),
        SendOutcome(OUT_OF_WINDOW, error="too old"),
    ]:
        outcomes.count(outcome)
    assert outcomes == Outcomes(delivered=3, failed=1, out_of_window=1, duplicate=1)
    assert outcomes.sent == 2
    with pytest.raises(ValueError, match="not an outcome status"):
        outcomes.count(SendOutcome("pending"))


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_confirmations_are_written_when_the_batch_is_full() -> None:
    written: list[list[Confirmation]] = []
    buffer = ConfirmBuffer(lambda rows: written.append(list(rows)), batch=3, clock=Clock())
    for ledger_id in range(1, 8):
        buffer.add(ledger_id, SendOutcome(DELIVERED))
    assert [[r[0] for r in batch] for batch in written] == [[1, 2, 3], [4, 5, 6]]
    assert len(buffer) == 1
    buffer.flush()
    assert written[-1] == [(7, DELIVERED, None)] and len(buffer) == 0


def test_confirmations_are_written_when_overdue_and_carry_status_and_error() -> None:
    clock = Clock()
    written: list[list[Confirmation]] = []
    buffer = ConfirmBuffer(
        lambda rows: written.append(list(rows)), batch=25, every_seconds=0.25, clock=clock
    )
    buffer.add(1, SendOutcome(DELIVERED))
    clock.now += 0.1
    buffer.add(2, SendOutcome(FAILED, error="400 bad"))
    assert written == []
    clock.now += 0.2  # 0.3 s since the last write
    buffer.add(3, SendOutcome(OUT_OF_WINDOW, error="too old"))
    assert written == [
        [(1, DELIVERED, None), (2, FAILED, "400 bad"), (3, OUT_OF_WINDOW, "too old")]
    ]
    clock.now += 0.1  # the clock restarts at each write
    buffer.add(4, SendOutcome(DELIVERED))
    assert len(written) == 1


def test_a_final_flush_of_nothing_still_writes() -> None:
    # The push's last flush always runs: it is where a lost database shows up.
    written: list[list[Confirmation]] = []
    ConfirmBuffer(lambda rows: written.append(list(rows))).flush()
    assert written == [[]]


def _result(outcomes: Outcomes, refused: list[RefusedValue], attempted: int = 4) -> PushResult:
    desired = DesiredDay(
        totals=[
            DayTotal("t1", "queries", 10, "cus_1", "rag_api_queries"),
            DayTotal("t1", "tokens", 100, "cus_1", "rag_tokens"),
            DayTotal("t2", "queries", 5, "cus_2", "rag_api_queries"),
            DayTotal("t2", "tokens", 0, "cus_2", "rag_tokens"),
        ],
        unbillable={"t3": {"queries": 1, "tokens": 0}},
    )
    return PushResult(
        day=DAY,
        attempted=attempted,
        outcomes=outcomes,
        unchanged=0,
        stranded=[],
        desired=desired,
        refused=refused,
        meters=METERS,
        requests_per_second=20.0,
        push_seconds=0.5,
    )


def test_result_totals_per_metric_and_billable_tenants() -> None:
    result = _result(Outcomes(delivered=4), [])
    assert result.totals == {"queries": 15, "tokens": 100}
    assert result.billable_tenants == 2
    assert result.problems() == []


def test_failed_events_and_refused_values_fail_the_run_with_one_message_each() -> None:
    refused = [RefusedValue("t9", DAY, "billable_queries", -5, "negative")]
    problems = _result(Outcomes(delivered=3, failed=1), refused).problems()
    assert problems == [
        refused_message(DAY, refused),
        "1 of 4 meter events for 2026-03-14 failed; re-run the partition to retry them "
        "(same identifiers, no double count)",
    ]


def test_refused_message_names_each_value_up_to_a_limit() -> None:
    refused = [
        RefusedValue(f"t{i}", DAY, "billable_queries", -i, "negative") for i in range(1, 4)
    ] + [RefusedValue("t1", DAY, "tokens", None, "missing")]
    message = refused_message(DAY, refused, limit=2)
    assert message.splitlines() == [
        "4 stored usage value(s) for 2026-03-14 refused: nothing was sent for 3 tenant(s), "
        "the others were pushed; fix daily_tenant_usage and re-run the partition:",
        "tenant 't1' on 2026-03-14: billable_queries = -1 (negative)",
        "tenant 't2' on 2026-03-14: billable_queries = -2 (negative)",
        "... and 2 more",
    ]
