"""The five classic production failures of usage billing, each on one simulated billing month.

One month runs once for the module (six tenants, one per card story) with webhook chaos on
(duplicated and reordered deliveries), a webhook outage across the renewal, and a subscription
cancelled behind our back; each test then checks one failure's guarantee on what happened.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import psycopg
import pytest
from billing_sandbox import month
from billing_sandbox.stripe import Chaos
from psycopg.rows import dict_row

from billing_pipelines.lib.webhooks.handlers import HANDLERS
from billing_pipelines.runs import code_location, materialize_days

# The month runs once, in the first test's set-up: minutes, more on a loaded machine.
pytestmark = pytest.mark.timeout(900)

TENANTS = 6  # one per card story: good, good_trial, none_trial, fails_later, recovers, declined
# Relative to today: the recovery job lists Stripe's last 30 days of real time, so the
# simulated outage (around the renewal, ~10 days ago) falls inside that window on any date.
START = datetime.now(UTC).date() - timedelta(days=40)
OUTAGE_FROM, OUTAGE_TO = 26, 32  # no deliveries across the period's last days and its renewal
DRIFT_DAY = 38  # a week after renewal someone cancels in the Stripe dashboard: no webhook


def _endpoint(ctx: month.DayContext) -> str:
    return str(ctx.client.v1.webhook_endpoints.list().data[0].id)


def _outage_starts(ctx: month.DayContext) -> None:
    ctx.client.v1.webhook_endpoints.update(_endpoint(ctx), {"disabled": True})


def _outage_ends(ctx: month.DayContext) -> None:
    ctx.client.v1.webhook_endpoints.update(_endpoint(ctx), {"disabled": False})
    # Stripe gave up on those deliveries; the daily recovery job lists what we lack.
    recovery = code_location().resolve_job_def("stripe_event_recovery_job")
    # On the month's own instance (pooled connections), as every run the tests start.
    assert recovery.execute_in_process(instance=ctx.pump.instance).success


def _cancel_behind_our_back(ctx: month.DayContext) -> None:
    good = next(p for p in ctx.people if p.card == "good")
    with psycopg.connect(ctx.database_url) as conn:
        (sub_id,) = conn.execute(
            "SELECT stripe_subscription_id FROM tenants WHERE tenant_id = %s", (good.tenant_id,)
        ).fetchone() or (None,)
    ctx.client.v1.webhook_endpoints.update(_endpoint(ctx), {"disabled": True})
    ctx.client.v1.subscriptions.cancel(str(sub_id))


@pytest.fixture(scope="module")
def simulated(embedded_services: dict[str, str]) -> dict[str, Any]:
    """Run the month once; keep what the tests need while the sandbox still serves."""
    seen: dict[str, Any] = {}

    def capture(result: month.MonthResult) -> None:
        # Runs while the sandbox still serves: everything that talks to Stripe happens here.
        seen["result"] = result
        instance = result.instance
        assert instance is not None
        seen["numbers"] = month.report(result, echo=lambda _: None)
        url = result.database_url
        seen["ledger_before"] = _rows(url, "SELECT count(*) AS n FROM usage_report_ledger")[0]["n"]
        seen["rerun_ok"] = [
            ok
            for _, ok in materialize_days(
                "usage_to_stripe_job",
                START + timedelta(days=4),
                START + timedelta(days=6),
                None,
                instance=instance,
            )
        ]
        seen["ledger_after"] = _rows(url, "SELECT count(*) AS n FROM usage_report_ledger")[0]["n"]
        good = next(p for p in result.people if p.card == "good").tenant_id
        seen["drift_before"] = _rows(
            url, "SELECT api_access_enabled FROM tenants WHERE tenant_id = %s", good
        )[0]
        remediation = code_location().resolve_job_def("subscription_remediation_job")
        seen["remediation_ok"] = remediation.execute_in_process(
            instance=instance,
            run_config={"ops": {"remediate_subscription_state": {"config": {"dry_run": False}}}},
        ).success
        # The endpoint is still down since the drift: the daily recovery job closes the gap.
        recovery = code_location().resolve_job_def("stripe_event_recovery_job")
        seen["recovery_ok"] = recovery.execute_in_process(instance=instance).success
        month.SensorPump(code_location(), instance).pump()
        ours = set(result.customers.values())
        seen["invoices"] = [
            inv.to_dict()
            for inv in result.client.v1.invoices.list({"limit": 100}).auto_paging_iter()
            if inv.customer in ours
        ]
        seen["sandbox_events"] = {
            e.id: e.type for e in result.client.v1.events.list({"limit": 100}).auto_paging_iter()
        }

    month.simulate(
        database_url=embedded_services["DATABASE_URL"],
        clickhouse_url=embedded_services["CLICKHOUSE_URL"],
        tenant_count=TENANTS,
        seed=11,
        start=START,
        echo=lambda _: None,
        usage_scale=0.5,
        on_done=capture,
        webhook_chaos=Chaos(duplicate_rate=0.3, max_delay_seconds=0.3),
        hooks={
            OUTAGE_FROM: _outage_starts,
            OUTAGE_TO: _outage_ends,
            DRIFT_DAY: _cancel_behind_our_back,
        },
    )
    seen["people"] = {p.card: p.tenant_id for p in seen["result"].people}
    return seen


def _rows(url: str, query: str, *params: Any) -> list[dict[str, Any]]:
    with psycopg.connect(url, row_factory=dict_row) as conn:
        return conn.execute(query, params).fetchall()


def test_every_run_succeeded(simulated: dict[str, Any]) -> None:
    assert simulated["result"].failed_runs == []


def test_the_month_is_judged_with_the_webhook_queue_drained(
    simulated: dict[str, Any], embedded_services: dict[str, str]
) -> None:
    left = _rows(
        embedded_services["DATABASE_URL"],
        "SELECT status, count(*) AS n FROM webhook_events GROUP BY status",
    )
    by_status = {r["status"]: r["n"] for r in left}
    assert sum(by_status.values()) > 100
    assert simulated["result"].webhook_events_left == 0
    assert not {"pending", "failed", "processing"} & set(by_status), by_status


def test_failure_1_missed_webhooks_are_recovered(
    simulated: dict[str, Any], embedded_services: dict[str, str]
) -> None:
    stored = {
        r["event_id"]
        for r in _rows(embedded_services["DATABASE_URL"], "SELECT event_id FROM webhook_events")
    }
    handled = {eid for eid, kind in simulated["sandbox_events"].items() if kind in HANDLERS}
    # Every event the handlers act on is in the queue, those of the outages too (the recovery
    # job found them); the queue is keyed by event id, so each is there once.
    assert handled and handled - stored == set()
    recovered = _rows(
        embedded_services["DATABASE_URL"],
        "SELECT count(*) AS n FROM webhook_events WHERE source = 'recovery'",
    )
    assert recovered[0]["n"] > 0
    # The renewal failures missed during the outage still walked the ladder to suspension.
    failing = simulated["people"]["fails_later"]
    steps = _rows(
        embedded_services["DATABASE_URL"],
        "SELECT step FROM dunning_actions WHERE tenant_id = %s ORDER BY step",
        failing,
    )
    assert [r["step"] for r in steps] == [1, 2, 3, 4]


def test_failure_2_double_counting_is_impossible(
    simulated: dict[str, Any], embedded_services: dict[str, str]
) -> None:
    # The month audited to zero difference between warehouse, ledger, meters and invoices.
    assert simulated["result"].checks["usage_matches_invoices"] is True
    # Re-running past days' push (a backfill) sends nothing: the truth has not changed.
    assert simulated["rerun_ok"] == [True, True, True]
    assert simulated["ledger_after"] == simulated["ledger_before"] > 0


def test_failure_3_trial_without_card_is_caught(
    simulated: dict[str, Any], embedded_services: dict[str, str]
) -> None:
    tenant = simulated["people"]["none_trial"]
    (row,) = _rows(
        embedded_services["DATABASE_URL"],
        "SELECT billing_status, api_access_enabled FROM tenants WHERE tenant_id = %s",
        tenant,
    )
    assert row["billing_status"] == "paused" and row["api_access_enabled"] is False
    findings = _rows(
        embedded_services["DATABASE_URL"],
        "SELECT category FROM subscription_state_findings WHERE tenant_id = %s",
        tenant,
    )
    # Paused in Stripe and no access locally: the two agree, so reconciliation finds nothing
    # to do (a finding here would teach operators to ignore the check).
    assert findings == []
    assert simulated["result"].checks["no_trial_ended_without_payment_method_served"] is True
    reminders = _rows(
        embedded_services["DATABASE_URL"],
        "SELECT template FROM notification_outbox WHERE tenant_id = %s",
        tenant,
    )
    assert [r["template"] for r in reminders].count("trial_ending") == 1


def test_failure_4_out_of_order_payments_never_suspend_a_payer(
    simulated: dict[str, Any], embedded_services: dict[str, str]
) -> None:
    url = embedded_services["DATABASE_URL"]
    for story in ("good", "good_trial", "recovers"):
        tenant = simulated["people"][story]
        emails = {
            r["template"]
            for r in _rows(
                url, "SELECT template FROM notification_outbox WHERE tenant_id = %s", tenant
            )
        }
        assert "suspended" not in emails, (story, emails)
    (recovered,) = _rows(
        url,
        "SELECT billing_status, api_access_enabled, rate_limit_multiplier FROM tenants "
        "WHERE tenant_id = %s",
        simulated["people"]["recovers"],
    )
    assert recovered["billing_status"] == "active" and recovered["api_access_enabled"]
    assert str(recovered["rate_limit_multiplier"]) == "1.00"


def test_failure_5_drift_is_detected_and_remediated(
    simulated: dict[str, Any], embedded_services: dict[str, str]
) -> None:
    url = embedded_services["DATABASE_URL"]
    tenant = simulated["people"]["good"]
    # Cancelled in Stripe with no webhook: still served locally, and the check says so.
    assert simulated["result"].checks["no_canceled_subscription_served"] is False
    said = simulated["result"].findings["no_canceled_subscription_served"]
    assert tenant in said and "subscription_remediation_job" in said
    # Health is judged on the test clock's day (the business clock), not on today's date.
    clock = simulated["result"].business_clock
    assert clock is not None
    (health,) = _rows(url, "SELECT day FROM billing_health_daily")
    assert health["day"] == datetime.fromisoformat(clock).date()
    assert simulated["drift_before"]["api_access_enabled"] is True
    assert simulated["remediation_ok"]
    (after,) = _rows(
        url, "SELECT api_access_enabled, billing_status FROM tenants WHERE tenant_id = %s", tenant
    )
    assert after["api_access_enabled"] is False and after["billing_status"] == "canceled"
    audit = _rows(
        url,
        "SELECT actor, before, after FROM audit_log WHERE entity_id = %s "
        "AND actor LIKE 'reconciliation remediation%%'",
        tenant,
    )
    assert audit and audit[-1]["before"]["api_access_enabled"] is True


# The Stripe sandbox's TEST DATA rates (made up, not real tax rates), restated here so the
# expected tax does not come from the code under test: percent by country; a German customer
# with an eu_vat id is reverse charged, a country without a rate is not collected.
TEST_PERCENT = {"US": Decimal(5), "CA": Decimal(12), "DE": Decimal(20)}


def _expected_tax(amount: int, country: str, reverse_charge: bool) -> int:
    percent = Decimal(0) if reverse_charge else TEST_PERCENT.get(country, Decimal(0))
    # Each line's tax rounded to the cent, half away from zero (the sandbox's stated choice).
    return int((Decimal(amount) * percent / 100).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def test_taxed_tenants_pay_tax_on_top_and_the_audit_compares_before_tax(
    simulated: dict[str, Any],
) -> None:
    result = simulated["result"]
    where = {result.customers[p.tenant_id]: p.location for p in result.people}
    billed = [i for i in simulated["invoices"] if i["status"] in ("open", "paid", "uncollectible")]
    assert billed
    taxed_cents = 0
    for inv in billed:
        location = where[inv["customer"]]
        assert location is not None and inv["automatic_tax"]["enabled"] is True
        reverse = any(t.type == "eu_vat" for t in location.tax_ids)
        assert location.country is not None
        expected = 0
        for line in inv["lines"]["data"]:
            want = _expected_tax(int(line["amount"]), location.country, reverse)
            assert sum(int(t["amount"]) for t in line["taxes"]) == want, (inv["id"], line)
            expected += want
        assert sum(int(t["amount"]) for t in inv["total_taxes"]) == expected
        subtotal = sum(int(line["amount"]) for line in inv["lines"]["data"])
        assert inv["subtotal"] == inv["total_excluding_tax"] == subtotal
        assert inv["total"] == subtotal + expected
        taxed_cents += expected
    countries = {where[i["customer"]].country for i in billed}
    assert {"US", "CA", "DE"} <= countries  # taxed at three TEST rates
    assert taxed_cents > 0 and simulated["numbers"]["billed_tax_cents"] == taxed_cents
    # The usage audit compared the lines' pre-tax amounts with the warehouse truth: zero
    # difference while every invoice carried tax on top.
    assert result.checks.get("usage_matches_invoices") is True
