"""Stored usage values the meter push refuses (NaN, negative, absurd), and what it does instead."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import pytest

from billing_pipelines.lib.metering.planning import (
    DELIVERED,
    BillingAccount,
    LedgerEntry,
    RefusedValue,
    desired_totals,
    screen_usage,
)

DAY = date(2026, 3, 3)
CEILING = 1_000_000
COLUMNS = ["billable_queries"]


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (float("nan"), "not a finite number"),
        (float("inf"), "not a finite number"),
        (Decimal("NaN"), "not a finite number"),
        (-1, "negative"),
        (-0.0001, "not a whole number"),
        (12.5, "not a whole number"),
        (CEILING + 1, "above the sanity ceiling of 1,000,000 (METER_DAILY_VALUE_CEILING)"),
        (2**63 - 1, "above the sanity ceiling"),
        (None, "missing"),
        ("12", "not a number"),
        (True, "not a number"),
    ],
)
def test_bad_values_are_refused_naming_tenant_day_and_value(value: object, reason: str) -> None:
    clean, refused = screen_usage(
        DAY, {"good": {"billable_queries": 7}, "bad": {"billable_queries": value}}, COLUMNS, CEILING
    )
    assert clean == {"good": {"billable_queries": 7}}
    [refusal] = refused
    assert (refusal.tenant_id, refusal.usage_date, refusal.column) == (
        "bad",
        DAY,
        "billable_queries",
    )
    assert reason in refusal.reason
    line = refusal.describe()
    assert line.startswith(f"tenant 'bad' on 2026-03-03: billable_queries = {value!r} (")


def test_sane_values_pass_including_the_ceiling_and_whole_floats() -> None:
    usage = {"a": {"billable_queries": CEILING}, "b": {"billable_queries": 0}, "c": {"x": 1}}
    usage["d"] = {"billable_queries": 5.0}  # type: ignore[dict-item]
    clean, refused = screen_usage(DAY, usage, COLUMNS, CEILING)
    assert refused == []
    assert clean == {
        "a": {"billable_queries": CEILING},
        "b": {"billable_queries": 0},
        "c": {"billable_queries": 0},  # no column: no usage, as desired_totals reads it
        "d": {"billable_queries": 5},
    }


def test_unbilled_columns_are_not_screened_and_every_bad_column_is_reported() -> None:
    usage = {"t": {"billable_queries": -3, "tokens": -4, "embeddings": float("nan")}}
    clean, refused = screen_usage(DAY, usage, ["billable_queries", "tokens"], CEILING)
    assert clean == {}
    assert [(r.column, r.value) for r in refused] == [("billable_queries", -3), ("tokens", -4)]


def test_a_held_tenant_is_neither_zeroed_nor_reported_while_others_are() -> None:
    meters = [("queries", "rag_api_queries", "billable_queries")]
    accounts = {t: BillingAccount(f"cus_{t}", f"sub_{t}") for t in ("held", "gone", "ok")}
    latest = {
        (t, "queries"): LedgerEntry(i, t, "queries", 50, 1, f"id-{t}", f"cus_{t}", "e", DELIVERED)
        for i, t in enumerate(("held", "gone"))
    }
    usage = {"held": {"billable_queries": -1}, "ok": {"billable_queries": 9}}
    clean, refused = screen_usage(DAY, usage, ["billable_queries"], CEILING)
    assert refused == [RefusedValue("held", DAY, "billable_queries", -1, "negative")]
    desired = desired_totals(clean, accounts, meters, latest, held={"held"})
    # "gone" was deleted upstream: wanted at 0. "held" keeps what Stripe has (50): no total.
    assert sorted((t.tenant_id, t.value) for t in desired.totals) == [("gone", 0), ("ok", 9)]
    # Without the hold, the refused tenant would have been zeroed in Stripe: the bug it prevents.
    unheld = desired_totals(clean, accounts, meters, latest)
    assert ("held", 0) in [(t.tenant_id, t.value) for t in unheld.totals]


def test_the_warehouse_side_refuses_nan_and_negative_before_anything_is_stored() -> None:
    """The first gate: daily_tenant_usage's pandera schema (its blocking check)."""
    import pandas as pd

    from billing_pipelines.lib.usage.schema import COUNT_COLUMNS, validate_daily_usage

    frame = pd.DataFrame(
        {"tenant_id": ["t1", "t2"], **{c: [2, 2] for c in COUNT_COLUMNS}, "duplicate_events": 0}
    )
    frame["billable_queries"] = [float("nan"), 1.0]  # a NaN turns the column into floats
    frame["tokens"] = [5, -7]
    validation = validate_daily_usage(frame, {"t1", "t2"})
    assert not validation.passed
    cases = {
        (c.check, c.column, str(c.failure_case)) for c in validation.failure_cases.itertuples()
    }
    assert cases >= {
        ("not_nullable", "billable_queries", "nan"),
        ("dtype('int64')", "billable_queries", "nan"),
        ("greater_than_or_equal_to(0)", "tokens", "-7"),
    }
