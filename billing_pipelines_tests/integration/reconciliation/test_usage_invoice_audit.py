"""Usage against invoices over a closed billing period: the real pipeline (warehouse ->
daily_tenant_usage -> meter reports -> Stripe invoice), then a double count seeded by a tampered
ledger, against the Stripe sandbox, embedded PostgreSQL and the chDB warehouse."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from datetime import UTC, date, datetime, timedelta
from typing import Any

import dagster as dg
import psycopg
import stripe
from billing_sandbox.stripe import SandboxHandle

from billing_pipelines.defs.metering.assets import stripe_meter_reports
from billing_pipelines.defs.reconciliation.assets import (
    AUDIT_CHECK,
    stripe_invoice_snapshot,
    stripe_subscription_snapshot,
    usage_invoice_audit,
)
from billing_pipelines.defs.usage.assets import daily_tenant_usage
from billing_pipelines.lib.metering import ledger
from billing_pipelines.lib.metering.planning import (
    DELIVERED,
    MeterReport,
    event_timestamp,
    identifier_for,
)
from billing_pipelines.lib.stripe import meters as stripe_meters
from billing_pipelines.lib.usage import warehouse as wh
from billing_pipelines_tests.cli_process import run_billing
from billing_pipelines_tests.integration.reconciliation import support
from billing_pipelines_tests.support import API_KEY, advance
from billing_pipelines_tests.webhook_harness import query

DAY = datetime.now(UTC).date() - timedelta(days=3)  # recent: inside Stripe's 35-day window
START = int(wh.day_bounds(DAY)[0].timestamp())


def _markdown(metadata: Mapping[str, dg.MetadataValue], key: str) -> str:
    """A markdown metadata entry's text (the audit's tables are markdown)."""
    value = metadata[key]
    assert isinstance(value, dg.MarkdownMetadataValue), value
    return value.value


def _table(metadata: Mapping[str, dg.MetadataValue], key: str) -> list[dict[str, Any]]:
    """A table metadata entry's rows as dicts."""
    value = metadata[key]
    assert isinstance(value, dg.TableMetadataValue), value
    return [dict(record.data) for record in value.records]


def insert_queries(tenant_id: str, count: int, copies: int = 1) -> None:
    """`count` distinct queries on DAY, each logged `copies` times (cache duplicates)."""
    start, _ = wh.day_bounds(DAY)
    wh.connect(os.environ["CLICKHOUSE_URL"]).command(
        """
        INSERT INTO usage_events (event_id, query_id, tenant_id, timestamp, event_type,
            tokens_used, embeddings_count, latency_ms)
        SELECT generateUUIDv4(), concat({tenant:String}, '-q', toString(n)), {tenant:String},
               {start:DateTime64(3, 'UTC')} + toIntervalSecond(n % 80000), 'query', 12, 1, 40
        FROM (SELECT number % {count:UInt64} AS n FROM numbers({rows:UInt64}))
        """,
        parameters={"tenant": tenant_id, "start": start, "count": count, "rows": count * copies},
    )


def double_report(client: stripe.StripeClient, db_url: str, tenant_id: str, customer: str) -> None:
    """A buggy reporter sends the tenant's DAY total again under the next day, through the same
    ledger and meter event code the pipeline uses: Stripe now bills that usage twice."""
    next_day: date = DAY + timedelta(days=1)
    with psycopg.connect(db_url, row_factory=psycopg.rows.dict_row) as conn:
        value = ledger.latest_entries(conn, DAY)[(tenant_id, "queries")].value
        report = MeterReport(
            tenant_id=tenant_id,
            metric="queries",
            usage_date=next_day,
            value=value,
            value_version=1,
            identifier=identifier_for(tenant_id, "queries", next_day, 1),
            stripe_customer_id=customer,
            event_name="rag_api_queries",
            timestamp=event_timestamp(next_day, 1),
        )
        (pending,) = ledger.record_pending(conn, [report], "tampered")
        outcome = stripe_meters.send_meter_event(client, pending)
        assert outcome.status == DELIVERED
        assert pending.ledger_id is not None
        ledger.record_outcome(conn, pending.ledger_id, DELIVERED)


def test_seeded_double_count_fails_the_audit_and_the_untampered_period_is_exact(
    stripe_sandbox: SandboxHandle,
    stripe_client: stripe.StripeClient,
    billing_db_url: str,
    embedded_services: dict[str, str],
) -> None:
    c = stripe_client
    support.catalog(c)
    resources = support.resources(stripe_sandbox.url, billing_db_url)
    ch = wh.connect(embedded_services["CLICKHOUSE_URL"])
    wh.ensure_usage_schema(ch)
    wh.clear_usage_events(ch)
    _, _, clean_clock = support.tenant(c, billing_db_url, "t-clean", frozen_time=START)
    doubled_customer, doubled_sub, doubled_clock = support.tenant(
        c, billing_db_url, "t-doubled", frozen_time=START
    )
    for clock in (clean_clock, doubled_clock):
        advance(c, clock, START + 86400 + 1800)  # DAY is over for both customers
    insert_queries("t-clean", 125_000, copies=2)  # every query logged twice: billed once
    insert_queries("t-doubled", 125_000)
    pushed = dg.materialize(
        [daily_tenant_usage, stripe_meter_reports],
        partition_key=DAY.isoformat(),
        resources=resources,
    )
    assert pushed.success
    (usage_mat,) = pushed.asset_materializations_for_node("daily_tenant_usage")
    by_tenant = _table(usage_mat.metadata, "usage_by_tenant")
    assert [r["tenant_id"] for r in by_tenant] == ["t-clean", "t-doubled"]
    assert (by_tenant[0]["billable_queries"], by_tenant[0]["raw_events"]) == ("125,000", "250,000")
    assert by_tenant[0]["duplicate_rate"] == "50.00 %"  # every query logged twice
    assert by_tenant[1]["duplicate_rate"] == "0.00 %"
    double_report(c, billing_db_url, "t-doubled", doubled_customer)

    period_end = c.v1.subscriptions.retrieve(doubled_sub)["items"].data[0].current_period_end
    for clock in (clean_clock, doubled_clock):
        advance(c, clock, period_end + 2 * 3600)  # period closed, invoices finalized and paid

    result = dg.materialize(
        [stripe_subscription_snapshot, stripe_invoice_snapshot, usage_invoice_audit],
        resources=resources,
    )
    assert result.success
    (check,) = [e for e in result.get_asset_check_evaluations() if e.check_name == AUDIT_CHECK]
    assert not check.passed and check.severity == dg.AssetCheckSeverity.ERROR
    details = _markdown(check.metadata, "details")
    last = datetime.fromtimestamp(period_end - 1, UTC).date()
    # The tenant, the period and the amount: 250,000 billed (150,000 over = $120.00) where the
    # warehouse truth of 125,000 queries costs $20.00.
    assert f"| t-doubled | {DAY} to {last} |" in details
    assert "$100.00" in details and "over-charged by $100.00" in details
    assert "t-clean" not in details
    assert check.metadata["difference_cents"].value == 10_000
    assert check.metadata["difference"].value == "$100.00"
    (mat,) = result.asset_materializations_for_node("usage_invoice_audit")
    explanations = _markdown(mat.metadata, "explanations")
    assert (mat.metadata["over_charged"].value, mat.metadata["under_charged"].value) == (
        "$100.00",
        "$0.00",
    )
    assert explanations.count("the Pro plan's monthly base fee, $99.00.") == 2  # one per invoice
    assert "You used 250,000 queries: 150,000 over the 100,000 included = $120.00" in explanations

    # The same audit as a table, one row per tenant and period, the five sources side by side.
    lines = {r["tenant_id"]: r for r in _table(mat.metadata, "audit_lines")}
    assert set(lines) == {"t-clean", "t-doubled"}
    table = mat.metadata["audit_lines"]
    assert isinstance(table, dg.TableMetadataValue) and table.schema is not None
    assert table.schema.columns[0].name == "tenant_id"
    ok = lines["t-clean"]
    sources = ("warehouse", "daily_usage", "ledger", "stripe_meter", "invoice_quantity")
    assert [ok[k] for k in sources] == ["125,000"] * 5
    assert (ok["included"], ok["over"], ok["invoiced"], ok["recomputed"]) == (
        "100,000",
        "25,000",
        "$20.00",
        "$20.00",
    )
    assert (ok["difference"], ok["status"], ok["causes"]) == ("$0.00", "ok", "")
    assert ok["invoice_total"] == "$119.00"  # the $99.00 base fee and $20.00 of usage
    assert ok["invoice_status"] == "paid" and ok["invoice_number"]
    bad = lines["t-doubled"]
    assert [bad[k] for k in sources] == ["125,000", "125,000", "250,000", "250,000", "250,000"]
    assert (bad["invoiced"], bad["recomputed"], bad["difference"]) == (
        "$120.00",
        "$20.00",
        "$100.00",
    )
    assert bad["status"] == "over-charged" and bad["invoice_total"] == "$219.00"
    assert bad["period_start"] == f"{datetime.fromtimestamp(START, UTC):%Y-%m-%d %H:%M} UTC"

    rows = {
        r["tenant_id"]: r
        for r in query(billing_db_url, "SELECT * FROM usage_invoice_audit ORDER BY tenant_id")
    }
    clean: dict[str, Any] = rows["t-clean"]
    assert clean["difference_cents"] == 0 and clean["causes"] == []
    assert (
        clean["warehouse_queries"],
        clean["daily_usage_queries"],
        clean["ledger_queries"],
        clean["stripe_meter_queries"],
        clean["invoice_quantity"],
    ) == (125_000,) * 5
    assert clean["invoice_amount"] == clean["recomputed_amount"] == 2000
    assert clean["explanation"] == (
        f"For {DAY} to {last} (UTC): You used 125,000 queries: 25,000 over the 100,000 "
        "included = $20.00."
    )
    doubled = rows["t-doubled"]
    assert (doubled["warehouse_queries"], doubled["invoice_quantity"]) == (125_000, 250_000)
    assert (doubled["invoice_amount"], doubled["recomputed_amount"]) == (12_000, 2_000)
    assert doubled["difference_cents"] == 10_000
    causes = " ".join(doubled["causes"])
    assert f"{DAY + timedelta(days=1)}: the report ledger delivered 125,000 queries" in causes
    assert "double count" in causes

    # billing explain: the same line from the command line, down to the raw events.
    env = {
        **os.environ,
        "DATABASE_URL": billing_db_url,
        "CLICKHOUSE_URL": embedded_services["CLICKHOUSE_URL"],
        "STRIPE_API_KEY": API_KEY,
        "STRIPE_API_BASE": stripe_sandbox.url,
    }
    by_invoice = _explain(["--invoice", doubled["invoice_id"]], env)
    assert by_invoice.returncode == 0, by_invoice.stderr
    text = by_invoice.stdout
    assert f"({doubled['invoice_id']}): paid, total $219.00" in text
    assert f"Tenant t-doubled (Stripe customer {doubled_customer}) on Pro." in text
    assert "bills 250,000 queries" in text and "= $120.00." in text
    for day in (DAY, DAY + timedelta(days=1)):
        assert f"meter event {identifier_for('t-doubled', 'queries', day, 1)}" in text
    assert "250,000 queries over the period; the invoice line bills 250,000." in text
    assert "Verdict: over-charged." in text and "(difference $100.00)" in text
    assert "double count" in text
    assert "(125,000 billable queries" in text
    # The printed query, pasted into the warehouse, gives the printed count.
    sql = text[text.index("SELECT sum(queries)") : text.index("\n\nVerdict")]
    assert int(ch.query(sql).result_rows[0][0]) == 125_000

    month = f"{datetime.fromtimestamp(START, UTC):%Y-%m}"
    clean_text = _explain(["--tenant", "t-clean", "--period", month], env)
    assert clean_text.returncode == 0, clean_text.stderr
    assert "Verdict: correct." in clean_text.stdout and "<- differs" not in clean_text.stdout
    assert "tenant_id = 't-clean'" in clean_text.stdout
    sql = clean_text.stdout[clean_text.stdout.index("SELECT sum(queries)") :].split("\n\n")[0]
    assert int(ch.query(sql).result_rows[0][0]) == 125_000  # 250,000 rows, 125,000 distinct

    for args, message in [
        (["--tenant", "t-nobody", "--period", month], "no metered invoice line for tenant"),
        (["--tenant", "t-clean", "--period", "2026-13"], "--period must be a month as YYYY-MM"),
        (["--tenant", "t-clean"], "give either --invoice"),
        (["--invoice", "in_x", "--tenant", "t-clean"], "give either --invoice"),
    ]:
        refused = _explain(args, env)
        assert refused.returncode == 2, (args, refused.stdout, refused.stderr)
        assert refused.stderr.strip().startswith("error: ") and message in refused.stderr
        assert "Traceback" not in refused.stderr and len(refused.stderr.strip().splitlines()) == 1


def _explain(args: list[str], env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    """`billing explain ARGS` as an operator runs it."""
    return run_billing(["explain", *args], env, timeout=180)
