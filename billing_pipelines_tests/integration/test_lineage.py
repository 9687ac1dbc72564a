"""The loaded asset graph is one lineage, from the warehouse's events to the audit and health."""

from __future__ import annotations

import dagster as dg

from billing_pipelines.definitions import defs

# Written out by hand from what each asset reads: (upstream, downstream).
EXPECTED_EDGES = [
    # usage_events -> daily usage -> meter reports -> Stripe meters -> invoices -> audit
    ("usage_events", "daily_tenant_usage"),
    ("daily_tenant_usage", "stripe_meter_reports"),
    ("stripe_meter_reports", "stripe_meters"),
    ("stripe_meters", "stripe_invoices"),
    ("stripe_invoices", "stripe_invoice_snapshot"),
    ("stripe_invoice_snapshot", "usage_invoice_audit"),
    # the audit reads the warehouse, daily usage, the ledger, the meters and the snapshots
    ("usage_events", "usage_invoice_audit"),
    ("daily_tenant_usage", "usage_invoice_audit"),
    ("stripe_meter_reports", "usage_invoice_audit"),
    ("stripe_meters", "usage_invoice_audit"),
    ("stripe_subscription_snapshot", "usage_invoice_audit"),
    ("plan_catalog", "usage_invoice_audit"),
    # Stripe subscriptions -> state diff -> health
    ("stripe_subscriptions", "stripe_subscription_snapshot"),
    ("stripe_subscription_snapshot", "subscription_state_diff"),
    ("subscription_state_diff", "billing_health"),
    ("tenants", "subscription_state_diff"),
    ("webhook_events", "billing_health"),
    # the catalog
    ("plan_catalog", "stripe_catalog"),
    ("stripe_catalog", "stripe_meter_reports"),
    ("stripe_customers", "stripe_subscriptions"),
]

EXTERNAL = {
    "usage_events",
    "stripe_meters",
    "stripe_invoices",
    "stripe_customers",
    "stripe_subscriptions",
    "plan_catalog",
    "tenants",
    "webhook_events",
}


def _graph() -> dg.AssetGraph:
    return defs().resolve_asset_graph()


def test_the_lineage_has_every_expected_edge() -> None:
    graph = _graph()
    missing = [
        (up, down)
        for up, down in EXPECTED_EDGES
        if dg.AssetKey(up) not in graph.get(dg.AssetKey(down)).parent_keys
    ]
    assert not missing, f"edges missing from the loaded lineage: {missing}"


def test_sources_are_external_assets_with_descriptions() -> None:
    graph = _graph()
    for name in EXTERNAL:
        node = graph.get(dg.AssetKey(name))
        assert node.is_external and not node.is_materializable, name
        assert node.description, f"{name} has no description"


def test_the_asset_graph_is_one_connected_component() -> None:
    graph = _graph()
    keys = set(graph.get_all_asset_keys())
    neighbours: dict[dg.AssetKey, set[dg.AssetKey]] = {key: set() for key in keys}
    for key in keys:
        for parent in graph.get(key).parent_keys:
            neighbours[key].add(parent)
            neighbours.setdefault(parent, set()).add(key)
    start = min(keys, key=lambda k: k.to_user_string())
    seen, todo = {start}, [start]
    while todo:
        for other in neighbours[todo.pop()]:
            if other not in seen:
                seen.add(other)
                todo.append(other)
    apart = sorted(k.to_user_string() for k in set(neighbours) - seen)
    assert not apart, f"assets not connected to {start.to_user_string()}: {apart}"
    assert len(seen) >= len(EXTERNAL) + 8
