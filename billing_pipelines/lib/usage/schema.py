"""One day of per-tenant usage as a pandera schema: nothing is billed unless it holds."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd
    import pandera.pandas as pa

COUNT_COLUMNS = ("billable_queries", "tokens", "embeddings", "raw_events", "duplicate_events")


def daily_usage_schema(known_tenants: Collection[str]) -> pa.DataFrameSchema:
    """Types, non-negative counts, one row per tenant, and only tenants the billing DB knows."""
    import pandera.pandas as pa

    known = sorted(known_tenants)
    counts = {
        name: pa.Column("int64", pa.Check.ge(0), nullable=False, title=name)
        for name in COUNT_COLUMNS
    }
    return pa.DataFrameSchema(
        {
            "tenant_id": pa.Column(
                str,
                [pa.Check.str_length(min_value=1), pa.Check.isin(known, name="known_tenant")],
                nullable=False,
                unique=True,  # one row per tenant for the partition's single day
            ),
            **counts,
        },
        checks=[
            pa.Check(
                lambda df: df["billable_queries"] <= df["raw_events"] - df["duplicate_events"],
                name="billable_within_distinct_events",
                error="billable queries exceed distinct events",
            ),
            pa.Check(
                lambda df: df["duplicate_events"] <= df["raw_events"],
                name="duplicates_within_raw_events",
                error="more duplicates than events",
            ),
        ],
        strict=True,
        coerce=False,
        name="daily_tenant_usage",
    )


@dataclass(frozen=True)
class UsageValidation:
    """The outcome of validating one day's usage."""

    failure_cases: pd.DataFrame

    @property
    def passed(self) -> bool:
        """True when every check held."""
        return self.failure_cases.empty

    def summary(self, limit: int = 10) -> str:
        """The first failures, one per line: check, column and offending value."""
        lines = [
            f"{row.check} on {row.column}: {row.failure_case!r}"
            for row in self.failure_cases.head(limit).itertuples()
        ]
        more = len(self.failure_cases) - limit
        return "\n".join(lines + ([f"... and {more} more"] if more > 0 else []))


def validate_daily_usage(frame: pd.DataFrame, known_tenants: Collection[str]) -> UsageValidation:
    """Validate every check lazily, so one run reports all problems at once."""
    import pandas as pd
    from pandera.errors import SchemaErrors

    try:
        daily_usage_schema(known_tenants).validate(frame, lazy=True)
    except SchemaErrors as exc:
        cases = exc.failure_cases[["check", "column", "failure_case", "index"]].copy()
        cases["check"] = cases["check"].astype(str)
        cases["column"] = cases["column"].astype(str)
        return UsageValidation(cases.reset_index(drop=True))
    return UsageValidation(pd.DataFrame(columns=["check", "column", "failure_case", "index"]))
