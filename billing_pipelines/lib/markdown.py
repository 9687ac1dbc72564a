"""Markdown tables for run and check metadata in the Dagster UI, cut to a readable length."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

# The UI renders every row it is given; past this many an operator wants the query, not a page.
ROW_LIMIT = 50


def table(
    header: Sequence[str],
    rows: Sequence[Sequence[object]],
    *,
    limit: int = ROW_LIMIT,
    empty: str = "none",
) -> str:
    """Rows under a header as a markdown table; `empty` when there are none, the rest counted."""
    if not rows:
        return empty
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows[:limit]]
    if len(rows) > limit:
        lines.append(f"... and {len(rows) - limit} more")
    return "\n".join(lines)


def records_table(
    records: Sequence[Mapping[str, object]], *, limit: int = ROW_LIMIT, empty: str = "none"
) -> str:
    """Records (e.g. database rows) as a markdown table, headed by the first record's keys."""
    if not records:
        return empty
    header = list(records[0])
    return table(header, [[r[k] for k in header] for r in records], limit=limit, empty=empty)
