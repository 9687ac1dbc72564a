"""Tables for the Dagster UI as plain data: typed columns with descriptions, and rows.

The Dagster side turns a `Table` into `MetadataValue.table`; building it here keeps the
formatting testable without Dagster. Cells are already formatted for people (dollars,
percentages, thousands separators), so every column is text.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal

from billing_pipelines.lib.notifications.emails import format_money

Cell = str | int | float | bool | None


@dataclass(frozen=True)
class Column:
    """One column: its name, its type as Dagster names it, what it holds."""

    name: str
    description: str
    type: str = "string"


@dataclass
class Table:
    """Columns and rows (each row maps every column name to a cell)."""

    columns: list[Column]
    rows: list[dict[str, Cell]] = field(default_factory=list)

    def add(self, **cells: Cell) -> None:
        """Append a row; it must name exactly the table's columns."""
        names = [c.name for c in self.columns]
        if sorted(cells) != sorted(names):
            raise ValueError(f"row has {sorted(cells)}, the table {sorted(names)}")
        self.rows.append({name: cells[name] for name in names})


def money(cents: int | Decimal | None, currency: str = "usd") -> str:
    """Minor units as dollars ("$1,234.56"); "" when unknown."""
    return "" if cents is None else format_money(cents, currency)


def count(value: int | None) -> str:
    """A count with thousands separators ("1,234,567"); "" when unknown."""
    return "" if value is None else f"{value:,}"


def percent(rate: float | Decimal | None, digits: int = 2) -> str:
    """A rate (0.995) as a percentage ("99.50 %"); "" when there is no data."""
    return "" if rate is None else f"{float(rate) * 100:.{digits}f} %"
