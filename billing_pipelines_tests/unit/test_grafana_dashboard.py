"""The shipped Grafana dashboard only queries metrics the code exports."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from billing_pipelines.lib.monitoring.collector import BillingStateCollector, exported_names
from billing_pipelines.webhooks.app import Metrics

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "billing.json"

# PromQL words that look like identifiers but are not metric names.
_KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool",
    "and", "or", "unless", "offset", "inf", "nan",
}  # fmt: skip
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENTIFIER = re.compile(r"(?<![\w.$])([A-Za-z_:][A-Za-z0-9_:]*)\b(?!\s*\()")


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (not functions, labels, ranges, keywords)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)  # string literals
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # range and subquery windows
    text = _GROUPING.sub(" ", text)  # by (...), on (...), group_left (...)
    return {m for m in _IDENTIFIER.findall(text) if m.lower() not in _KEYWORDS}


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))  # panels folded inside a row


def test_metric_names_are_read_from_promql() -> None:
    expr = (
        'sum by (le, outcome) (rate(foo_bucket{a="x{y}",b=~"p|q"}[$__rate_interval])) '
        "/ on (queue) group_left (x) bar_total offset 1d * 1e3 + (time() - baz:ratio) > bool 0.5"
    )
    assert metric_names(expr) == {"foo_bucket", "bar_total", "baz:ratio"}
    assert metric_names("histogram_quantile(0.99, sum(rate(x_bucket[5m])))") == {"x_bucket"}


def test_every_panel_queries_only_exported_metrics() -> None:
    exported = exported_names(BillingStateCollector(connect=_no_database).describe())
    exported |= exported_names(Metrics().registry.collect())
    dashboard = json.loads(DASHBOARD.read_text())
    panels = list(_panels(dashboard["panels"]))
    assert panels
    used: set[str] = set()
    for panel in panels:
        if panel["type"] == "row":
            continue
        exprs = [t["expr"] for t in panel.get("targets", [])]
        assert exprs, f"panel {panel['title']!r} has no query"
        for expr in exprs:
            names = metric_names(expr)
            assert names, f"panel {panel['title']!r}: no metric in {expr!r}"
            unknown = names - exported
            assert not unknown, f"panel {panel['title']!r} queries unexported {sorted(unknown)}"
            used |= names
    # The two rates the business watches are on the dashboard.
    assert {"billing_webhook_events_finished_total", "billing_payment_attempts_total"} <= used


def test_a_misspelled_metric_is_caught() -> None:
    exported = exported_names(BillingStateCollector(connect=_no_database).describe())
    assert "billing_queue_depth" in exported
    assert metric_names("sum(billing_queue_dept)") - exported == {"billing_queue_dept"}


def _no_database() -> Any:
    pytest.fail("describing the families must not read the database")
