"""The plan catalog in Stripe: products, prices and meters, synced idempotently by stable keys.

Stripe prices are immutable, so a changed amount becomes a new price that takes over the
lookup key (`transfer_lookup_key`); the old price is left untouched for the subscriptions on it.
Products have deterministic ids, meters are found by `event_name`, prices by `lookup_key`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from billing_pipelines.lib.catalog.plans import ANNUAL, Catalog, Meter, Plan
from billing_pipelines.lib.errors import BillingConfigError
from billing_pipelines.lib.stripe.objects import object_id

if TYPE_CHECKING:
    import stripe

PRODUCT_PREFIX = "bp_plan_"
# Stripe filters prices by at most 10 lookup keys per list request.
LOOKUP_KEYS_PER_LIST = 10
# Tells operators (and our own sync) which objects this project manages.
MANAGED_BY = {"managed_by": "billing_pipelines"}


def product_id(plan: Plan) -> str:
    """Deterministic product id for a plan (Stripe accepts caller-chosen product ids)."""
    return f"{PRODUCT_PREFIX}{plan.key}"


def base_lookup_key(plan: Plan) -> str:
    """Lookup key of a plan's licensed monthly base price."""
    return f"{plan.key}_base_monthly"


def base_yearly_lookup_key(plan: Plan) -> str:
    """Lookup key of a plan's licensed yearly base price (the annual billing cycle)."""
    return f"{plan.key}_base_yearly"


def base_lookup_key_for(plan: Plan, cycle: str) -> str:
    """Lookup key of the base price a tenant on this billing cycle pays."""
    return base_yearly_lookup_key(plan) if cycle == ANNUAL else base_lookup_key(plan)


def usage_lookup_key(plan: Plan, meter: Meter) -> str:
    """Lookup key of a plan's graduated metered price for one meter."""
    return f"{plan.key}_{meter.metric}_overage_monthly"


@dataclass(frozen=True)
class PriceSpec:
    """What one catalog price must be: compared field by field with the live Stripe price."""

    lookup_key: str
    product: str
    currency: str
    nickname: str
    meter_event_name: str | None = None
    unit_amount: int | None = None
    # Graduated tiers: (up_to or None for infinity, unit amount in decimal cents).
    tiers: tuple[tuple[int | None, Decimal], ...] = ()
    metadata: Mapping[str, str] = field(default_factory=dict)
    # Recurring interval: usage is always monthly; a base fee may be yearly (annual cycle).
    interval: str = "month"

    def create_params(self, meter_ids: Mapping[str, str]) -> dict[str, Any]:
        """Params for prices.create (the lookup key moves to the new price if one holds it)."""
        params: dict[str, Any] = {
            "product": self.product,
            "currency": self.currency,
            "nickname": self.nickname,
            "lookup_key": self.lookup_key,
            "transfer_lookup_key": True,
            "metadata": {**MANAGED_BY, **self.metadata},
        }
        if self.meter_event_name is None:
            params["unit_amount"] = self.unit_amount
            params["recurring"] = {"interval": self.interval, "usage_type": "licensed"}
        else:
            params["billing_scheme"] = "tiered"
            params["tiers_mode"] = "graduated"
            params["recurring"] = {
                "interval": "month",
                "usage_type": "metered",
                "meter": meter_ids[self.meter_event_name],
            }
            params["tiers"] = [
                {"up_to": "inf" if up_to is None else up_to, "unit_amount_decimal": str(amount)}
                for up_to, amount in self.tiers
            ]
        return params

    def matches(self, price: stripe.Price, meter_ids: Mapping[str, str]) -> bool:
        """True when the live price bills exactly what this spec says."""
        recurring = price.recurring
        if (
            price.currency != self.currency
            or object_id(price.product) != self.product
            or recurring is None
            or recurring.interval != self.interval
            or (recurring.interval_count or 1) != 1
        ):
            return False
        if self.meter_event_name is None:
            return (
                recurring.usage_type == "licensed"
                and price.billing_scheme == "per_unit"
                and _decimal(price.unit_amount_decimal, price.unit_amount)
                == Decimal(self.unit_amount or 0)
            )
        if (
            recurring.usage_type != "metered"
            or recurring.meter != meter_ids.get(self.meter_event_name)
            or price.billing_scheme != "tiered"
            or price.tiers_mode != "graduated"
        ):
            return False
        tiers = (price["tiers"] if "tiers" in price else None) or []
        live = tuple(
            (t.up_to, _decimal(t.unit_amount_decimal, t.unit_amount))
            for t in tiers
            if not _decimal(t.flat_amount_decimal, t.flat_amount)
        )
        return len(live) == len(tiers) and live == self.tiers


def _decimal(decimal_text: str | Decimal | None, integer: int | None) -> Decimal:
    if decimal_text not in (None, ""):
        return Decimal(str(decimal_text))
    return Decimal(integer or 0)


def price_specs(catalog: Catalog) -> list[PriceSpec]:
    """Every price the catalog needs: a base fee (monthly, and yearly where declared) and one
    graduated monthly overage price per plan."""
    queries = catalog.meters["queries"]
    specs = []
    for plan in catalog.plans.values():
        meta = {"plan": plan.key, "trial_days": str(catalog.trial_days)}
        specs.append(
            PriceSpec(
                lookup_key=base_lookup_key(plan),
                product=product_id(plan),
                currency=catalog.currency,
                nickname=f"{plan.name} monthly base",
                unit_amount=plan.base_monthly_cents,
                metadata={**meta, "component": "base"},
            )
        )
        if plan.base_yearly_cents is not None:
            specs.append(
                PriceSpec(
                    lookup_key=base_yearly_lookup_key(plan),
                    product=product_id(plan),
                    currency=catalog.currency,
                    nickname=f"{plan.name} yearly base",
                    unit_amount=plan.base_yearly_cents,
                    metadata={**meta, "component": "base", "billing_cycle": ANNUAL},
                    interval="year",
                )
            )
        specs.append(
            PriceSpec(
                lookup_key=usage_lookup_key(plan, queries),
                product=product_id(plan),
                currency=catalog.currency,
                nickname=f"{plan.name} {queries.metric} above {plan.included_queries:,} included",
                meter_event_name=queries.event_name,
                # Included queries are the free first tier of a graduated price.
                tiers=(
                    (plan.included_queries, Decimal(0)),
                    (None, plan.overage_cents_per_query),
                ),
                metadata={**meta, "component": "usage", "metric": queries.metric},
            )
        )
    return specs


@dataclass
class CatalogSyncReport:
    """What a sync did; `changes` is empty when Stripe already matched the catalog."""

    meter_ids: dict[str, str] = field(default_factory=dict)
    price_ids: dict[str, str] = field(default_factory=dict)
    changes: list[str] = field(default_factory=list)
    unchanged: int = 0


def find_meters(client: stripe.StripeClient) -> dict[str, stripe.billing.Meter]:
    """Active meters by event_name."""
    return {
        m.event_name: m
        for m in client.v1.billing.meters.list(
            {"status": "active", "limit": 100}
        ).auto_paging_iter()
    }


def _sync_meter(
    client: stripe.StripeClient, meter: Meter, live: stripe.billing.Meter | None
) -> tuple[str, str | None]:
    if live is None:
        created = client.v1.billing.meters.create(
            {
                "display_name": meter.display_name,
                "event_name": meter.event_name,
                "default_aggregation": {"formula": "sum"},
                # One pre-aggregated event per tenant and UTC day; the newest replaces the rest.
                "event_time_window": "day",
                "customer_mapping": {"type": "by_id", "event_payload_key": "stripe_customer_id"},
                "value_settings": {"event_payload_key": "value"},
            },
            {"idempotency_key": f"bp-meter-{meter.event_name}"},
        )
        return created.id, f"created meter {meter.event_name} ({created.id})"
    if live.default_aggregation.formula != "sum" or live.event_time_window != "day":
        # Aggregation and window are immutable in Stripe: changing them is an operator decision
        # (a new event name, then a price migration), never something a sync does silently.
        raise BillingConfigError(
            f"Stripe meter {meter.event_name} ({live.id}) aggregates "
            f"{live.default_aggregation.formula} per {live.event_time_window or 'event'}; "
            "billing needs sum per day: create a new meter event name in plans.toml"
        )
    if live.display_name != meter.display_name:
        client.v1.billing.meters.update(live.id, {"display_name": meter.display_name})
        return live.id, f"renamed meter {meter.event_name} to {meter.display_name!r}"
    return live.id, None


def _sync_product(client: stripe.StripeClient, plan: Plan) -> str | None:
    import stripe

    pid = product_id(plan)
    try:
        live = client.v1.products.retrieve(pid)
    except stripe.InvalidRequestError as exc:
        if exc.http_status != 404:
            raise
        client.v1.products.create(
            {"id": pid, "name": plan.name, "metadata": {**MANAGED_BY, "plan": plan.key}},
            {"idempotency_key": f"bp-product-{pid}"},
        )
        return f"created product {pid}"
    if live.name != plan.name or not live.active:
        client.v1.products.update(pid, {"name": plan.name, "active": True})
        return f"updated product {pid} name={plan.name!r}"
    return None


def sync_catalog(client: stripe.StripeClient, catalog: Catalog) -> CatalogSyncReport:
    """Make Stripe match the catalog; a second run with the same catalog changes nothing."""
    report = CatalogSyncReport()
    live_meters = find_meters(client)
    for meter in catalog.meters.values():
        meter_id, change = _sync_meter(client, meter, live_meters.get(meter.event_name))
        report.meter_ids[meter.event_name] = meter_id
        report.changes.extend([change] if change else [])
        report.unchanged += change is None
    for plan in catalog.plans.values():
        change = _sync_product(client, plan)
        report.changes.extend([change] if change else [])
        report.unchanged += change is None
    specs = price_specs(catalog)
    live_prices: dict[str, stripe.Price] = {}
    keys = [s.lookup_key for s in specs]
    for start in range(0, len(keys), LOOKUP_KEYS_PER_LIST):
        listed = client.v1.prices.list(
            {
                "lookup_keys": keys[start : start + LOOKUP_KEYS_PER_LIST],
                "expand": ["data.tiers"],
                "limit": 100,
            }
        )
        live_prices.update({p.lookup_key: p for p in listed.data if p.lookup_key})
    for spec in specs:
        live = live_prices.get(spec.lookup_key)
        if live is not None and live.active and spec.matches(live, report.meter_ids):
            report.price_ids[spec.lookup_key] = live.id
            report.unchanged += 1
            continue
        # Never edit a live price: create its successor and move the lookup key to it.
        created = client.v1.prices.create(spec.create_params(report.meter_ids))  # type: ignore[arg-type]
        report.price_ids[spec.lookup_key] = created.id
        before = f" (was {live.id}, left as is)" if live is not None else ""
        report.changes.append(f"created price {spec.lookup_key} = {created.id}{before}")
    return report
