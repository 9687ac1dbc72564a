"""The meter push learns which ending periods are invoiced for good from one listing of the
day's invoices, not one listing per tenant whose renewal splits the day."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import dagster as dg
import pytest
import stripe
from billing_sandbox.stripe import SandboxHandle

from billing_pipelines.defs.metering.assets import stripe_meter_reports
from billing_pipelines.defs.usage.assets import daily_tenant_usage
from billing_pipelines.lib.stripe import meters as stripe_meters
from billing_pipelines.lib.stripe.transport import PacedRequestsClient
from billing_pipelines.lib.usage import warehouse as wh
from billing_pipelines_tests.integration.reconciliation import support
from billing_pipelines_tests.integration.reconciliation.test_period_boundary_push import insert
from billing_pipelines_tests.support import advance

# Sign-ups 34 days ago at three times of day: each renews a month later inside one UTC day.
SIGN_UP_DAY = datetime.combine(
    datetime.now(UTC).date() - timedelta(days=34), datetime.min.time(), UTC
)
SIGN_UPS = {"t-0915": (9, 15), "t-1430": (14, 30), "t-2205": (22, 5)}


def test_split_renewal_days_cost_one_invoice_listing_and_bill_the_new_periods_part(
    stripe_sandbox: SandboxHandle,
    stripe_client: stripe.StripeClient,
    billing_db_url: str,
    embedded_services: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    c = stripe_client
    support.catalog(c)
    ch = wh.connect(embedded_services["CLICKHOUSE_URL"])
    wh.ensure_usage_schema(ch)
    wh.clear_usage_events(ch)
    renewals: dict[str, datetime] = {}
    clocks: dict[str, str] = {}
    customers: dict[str, str] = {}
    for tenant, (hour, minute) in SIGN_UPS.items():
        signed = SIGN_UP_DAY + timedelta(hours=hour, minutes=minute)
        customers[tenant], sub, clocks[tenant] = support.tenant(
            c, billing_db_url, tenant, plan="starter", frozen_time=int(signed.timestamp())
        )
        end = c.v1.subscriptions.retrieve(sub)["items"].data[0].current_period_end
        renewals[tenant] = datetime.fromtimestamp(end, UTC)
    (day,) = {r.date() for r in renewals.values()}
    midnight, next_midnight = wh.day_bounds(day)
    after: dict[str, int] = {}
    for i, (tenant, renewal) in enumerate(renewals.items()):
        insert(tenant, f"{tenant}-before-", 300 + 7 * i, midnight, renewal)
        after[tenant] = 500 + 11 * i
        insert(tenant, f"{tenant}-after-", after[tenant], renewal, next_midnight)
    # The night after: every ending period's invoice is past the 1-hour grace, so final.
    for clock in clocks.values():
        advance(c, clock, int((next_midnight + timedelta(minutes=10)).timestamp()))

    requests: Counter[str] = Counter()
    send = PacedRequestsClient._send

    def counted(self: PacedRequestsClient, method: str, url: str, *args: Any) -> Any:
        requests[f"{method.upper()} {urlsplit(url).path}"] += 1
        return send(self, method, url, *args)

    monkeypatch.setattr(PacedRequestsClient, "_send", counted)
    result = dg.materialize(
        [daily_tenant_usage, stripe_meter_reports],
        partition_key=day.isoformat(),
        resources=support.resources(stripe_sandbox.url, billing_db_url),
        raise_on_error=False,
    )
    assert result.success
    assert requests["GET /v1/invoices"] == 1
    meter = stripe_meters.active_meter_ids(c)["rag_api_queries"]
    billed = {
        tenant: int(stripe_meters.day_total(c, meter, customers[tenant], day))
        for tenant in SIGN_UPS
    }
    # Each ending period is invoiced for good: the day reports the new period's part only.
    assert billed == after
