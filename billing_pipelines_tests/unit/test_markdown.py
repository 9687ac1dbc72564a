"""Markdown tables for run metadata: header, rows, the empty text and the cut-off line."""

from __future__ import annotations

from datetime import date

from billing_pipelines.lib.markdown import records_table, table


def test_rows_under_a_header() -> None:
    assert table(["tenant", "value"], [("t1", 3), ("t2", None)]) == (
        "| tenant | value |\n|---|---|\n| t1 | 3 |\n| t2 | None |"
    )


def test_no_rows_is_the_empty_text() -> None:
    assert table(["tenant"], []) == "none"
    assert table(["tenant"], [], empty="all totals match") == "all totals match"
    assert records_table([], empty="nothing") == "nothing"


def test_rows_past_the_limit_are_counted_not_shown() -> None:
    text = table(["n"], [(i,) for i in range(7)], limit=5)
    assert text.splitlines() == [
        "| n |",
        "|---|",
        "| 0 |",
        "| 1 |",
        "| 2 |",
        "| 3 |",
        "| 4 |",
        "... and 2 more",
    ]
    assert "more" not in table(["n"], [(i,) for i in range(5)], limit=5)


def test_records_are_headed_by_the_first_records_keys() -> None:
    rows = [
        {"tenant_id": "t1", "usage_date": date(2026, 3, 14), "value": -5},
        {"tenant_id": "t2", "usage_date": date(2026, 3, 15), "value": 7},
    ]
    assert records_table(rows, limit=1) == (
        "| tenant_id | usage_date | value |\n|---|---|---|\n| t1 | 2026-03-14 | -5 |\n"
        "... and 1 more"
    )
