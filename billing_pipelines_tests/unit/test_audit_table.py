"""The audit and daily usage as tables for the data team: columns, order, formatting, no cap."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pandas as pd
import pytest

from billing_pipelines.lib.catalog.plans import load_catalog
from billing_pipelines.lib.reconciliation.audit_table import (
    InvoiceSummary,
    audit_lines_table,
)
from billing_pipelines.lib.reconciliation.usage_audit import BilledLine, DaySources, audit_line
from billing_pipelines.lib.tables import Column, Table, count, money, percent
from billing_pipelines.lib.usage.tenant_table import usage_by_tenant

PRO = load_catalog().plans["pro"]  # $99.00 a month, 100,000 included, 0.08 cents a query over


def billed(
    tenant: str | None,
    start: datetime,
    end: datetime,
    quantity: int,
    amount: int,
    invoice: str = "in_1",
    plan: object = PRO,
) -> BilledLine:
    return BilledLine(
        invoice, "il_" + invoice, "cus_" + (tenant or "x"), tenant, plan,  # type: ignore[arg-type]
        "usd", start, end, quantity, amount, "mtr_1",
    )  # fmt: skip


def same(queries: int) -> dict[date, DaySources]:
    return {date(2026, 3, 20): DaySources(queries, queries, queries, queries)}


MAR = datetime(2026, 3, 14, 9, 30, tzinfo=UTC)  # a period that starts mid-day
APR = datetime(2026, 4, 14, 9, 30, tzinfo=UTC)
MAY = datetime(2026, 5, 14, 9, 30, tzinfo=UTC)


def test_an_included_period_reads_as_one_sentence_without_a_double_full_stop() -> None:
    row = audit_line(billed("t-a", MAR, APR, 40_000, 0), same(40_000))
    assert row.explanation.endswith("no usage charge.")
    assert ".." not in row.explanation


def test_audit_lines_put_tenant_first_and_every_source_side_by_side() -> None:
    # 1,250,000 queries on Pro: 1,150,000 over x 0.08 cents = 92,000 cents = $920.00.
    exact = audit_line(billed("t-b", APR, MAY, 1_250_000, 92_000, "in_b"), same(1_250_000))
    # Invoiced 250,000 ($120.00) where the warehouse holds 125,000 ($20.00): $100.00 over.
    doubled = audit_line(
        billed("t-a", APR, MAY, 250_000, 12_000, "in_a2"),
        {
            date(2026, 4, 20): DaySources(125_000, 125_000, 125_000, 125_000),
            date(2026, 4, 21): DaySources(0, 0, 125_000, 125_000),
        },
    )
    earlier = audit_line(billed("t-a", MAR, APR, 40_000, 0, "in_a1"), same(40_000))
    invoices = {
        "in_b": InvoiceSummary("B-0002", "paid", 101_900, "usd"),
        "in_a2": InvoiceSummary("A-0002", "open", 21_900, "usd"),
    }
    table = audit_lines_table([exact, doubled, earlier], invoices)
    names = [c.name for c in table.columns]
    assert names[0] == "tenant_id"
    assert {
        "warehouse",
        "daily_usage",
        "ledger",
        "stripe_meter",
        "invoice_quantity",
        "included",
        "over",
        "invoiced",
        "recomputed",
        "difference",
        "status",
        "invoice_number",
        "invoice_total",
        "invoice_status",
    } <= set(names)
    assert all(c.description for c in table.columns)
    # Tenants in order, each tenant's periods oldest first.
    assert [(r["tenant_id"], r["invoice_id"]) for r in table.rows] == [
        ("t-a", "in_a1"),
        ("t-a", "in_a2"),
        ("t-b", "in_b"),
    ]
    first, second, third = table.rows
    assert first["period_start"] == "2026-03-14 09:30 UTC"
    assert first["period_end"] == "2026-04-14 09:30 UTC"
    assert (first["status"], first["over"], first["invoiced"]) == ("ok", "0", "$0.00")
    assert first["invoice_number"] == "" and first["invoice_total"] == ""  # not in the snapshot
    assert second["warehouse"] == "125,000" and second["ledger"] == "250,000"
    assert second["stripe_meter"] == "250,000" and second["invoice_quantity"] == "250,000"
    assert (second["included"], second["over"]) == ("100,000", "150,000")
    assert (second["invoiced"], second["recomputed"], second["difference"]) == (
        "$120.00",
        "$20.00",
        "$100.00",
    )
    assert second["status"] == "over-charged"
    assert "double count" in str(second["causes"])
    assert (second["invoice_number"], second["invoice_total"], second["invoice_status"]) == (
        "A-0002",
        "$219.00",
        "open",
    )
    assert (third["warehouse"], third["invoiced"], third["status"]) == (
        "1,250,000",
        "$920.00",
        "ok",
    )
    assert third["invoice_total"] == "$1,019.00"


def test_under_charged_and_unknown_plans_read_plainly() -> None:
    under = audit_line(billed("t-c", MAR, APR, 100_000, 0), same(150_000))
    unknown = audit_line(billed(None, MAR, APR, 10, 500, "in_x", plan=None), same(10))
    rows = {r["invoice_id"]: r for r in audit_lines_table([under, unknown], {}).rows}
    assert rows["in_1"]["status"] == "under-charged"
    assert rows["in_1"]["difference"] == "-$40.00"  # 50,000 x 0.08 cents not billed
    assert rows["in_x"]["status"] == "sources differ"
    assert (rows["in_x"]["tenant_id"], rows["in_x"]["plan"]) == ("", "unknown")
    assert (rows["in_x"]["included"], rows["in_x"]["over"]) == ("", "")


def test_the_audit_table_has_no_row_cap() -> None:
    rows = [
        audit_line(billed(f"t-{n:04d}", MAR, APR, n, 0, f"in_{n}"), same(n)) for n in range(237)
    ]
    table = audit_lines_table(rows, {})
    assert len(table.rows) == 237
    assert table.rows[-1]["tenant_id"] == "t-0236"


def test_usage_by_tenant_lists_every_tenant_with_its_duplicate_rate() -> None:
    usage = pd.DataFrame(
        [
            ("t-z", 3, 36, 3, 4, 1),
            ("t-a", 1_500_000, 18_000_000, 1_500_000, 3_000_000, 1_500_000),
            ("t-m", 0, 0, 0, 0, 0),
        ],
        columns=[
            "tenant_id",
            "billable_queries",
            "tokens",
            "embeddings",
            "raw_events",
            "duplicate_events",
        ],
    )
    table = usage_by_tenant(usage)
    assert table.columns[0].name == "tenant_id"
    assert [r["tenant_id"] for r in table.rows] == ["t-a", "t-m", "t-z"]
    a, m, z = table.rows
    assert (a["billable_queries"], a["tokens"], a["duplicate_rate"]) == (
        "1,500,000",
        "18,000,000",
        "50.00 %",
    )
    assert z["duplicate_rate"] == "25.00 %"
    assert m["duplicate_rate"] == ""  # no events: no rate rather than 0 %


def test_formatting_helpers() -> None:
    assert money(123_456) == "$1,234.56" and money(-1234) == "-$12.34" and money(None) == ""
    assert money(5, "eur") == "€0.05"
    assert count(1_234_567) == "1,234,567" and count(0) == "0" and count(None) == ""
    assert percent(0.995) == "99.50 %" and percent(1) == "100.00 %" and percent(None) == ""
    table = Table([Column("a", "first"), Column("b", "second")])
    table.add(b="2", a="1")
    assert table.rows == [{"a": "1", "b": "2"}]
    with pytest.raises(ValueError, match="row has"):
        table.add(a="1")
