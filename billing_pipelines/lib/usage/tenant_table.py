"""One day's usage per tenant as a table for the data team: counts and the duplicate rate."""

from __future__ import annotations

from typing import TYPE_CHECKING

from billing_pipelines.lib.tables import Column, Table, count, percent

if TYPE_CHECKING:
    import pandas as pd

COLUMNS = [
    Column("tenant_id", "The tenant."),
    Column("billable_queries", "Distinct billable queries (what the plan's overage bills)."),
    Column("tokens", "Tokens used by the distinct events."),
    Column("embeddings", "Embeddings computed by the distinct events."),
    Column("raw_events", "Events in the warehouse, duplicates included."),
    Column("duplicate_events", "Copies of an event already counted (not billed)."),
    Column("duplicate_rate", "Share of the raw events that were duplicates."),
]


def usage_by_tenant(usage: pd.DataFrame) -> Table:
    """Every tenant of the day (no cap), in tenant order."""
    table = Table(list(COLUMNS))
    for record in usage.sort_values("tenant_id").to_dict("records"):
        raw = int(record["raw_events"])
        duplicates = int(record["duplicate_events"])
        table.add(
            tenant_id=str(record["tenant_id"]),
            billable_queries=count(int(record["billable_queries"])),
            tokens=count(int(record["tokens"])),
            embeddings=count(int(record["embeddings"])),
            raw_events=count(raw),
            duplicate_events=count(duplicates),
            duplicate_rate=percent(duplicates / raw if raw else None),
        )
    return table
