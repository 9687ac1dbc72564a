"""The plan catalog as data, and the exact money math of its graduated usage tiers."""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from importlib import resources
from pathlib import Path

from billing_pipelines.lib.errors import BillingConfigError

# How often a tenant pays the base fee; usage is measured and billed monthly in both cycles.
MONTHLY, ANNUAL = "monthly", "annual"
BILLING_CYCLES = (MONTHLY, ANNUAL)


@dataclass(frozen=True)
class Plan:
    """One subscription plan: a monthly base fee plus overage above an included quantity."""

    key: str
    name: str
    base_monthly_cents: int
    included_queries: int
    overage_cents_per_query: Decimal
    # A yearly base fee (annual billing cycle), offered only when the catalog declares one.
    base_yearly_cents: int | None = None

    def base_cents(self, cycle: str = MONTHLY) -> int:
        """The base fee one period of this billing cycle costs (a month, or a year)."""
        if cycle == ANNUAL:
            if self.base_yearly_cents is None:
                raise BillingConfigError(no_annual_price(self))
            return self.base_yearly_cents
        return self.base_monthly_cents

    def overage_cents(self, queries: int) -> Decimal:
        """Exact (unrounded) usage charge for a period's billable queries."""
        if queries < 0:
            raise ValueError(f"queries must be >= 0, got {queries}")
        return max(0, queries - self.included_queries) * self.overage_cents_per_query

    def period_total_cents(self, queries: int) -> int:
        """What one period costs, rounded to the cent as Stripe rounds line amounts."""
        total = Decimal(self.base_monthly_cents) + self.overage_cents(queries)
        return int(total.quantize(Decimal(1), rounding=ROUND_HALF_UP))


@dataclass(frozen=True)
class Meter:
    """One billed usage metric: which daily usage column feeds which Stripe meter."""

    metric: str
    event_name: str
    display_name: str
    usage_column: str


# Queries are what every plan's overage price bills; a catalog without [meters] bills them alone.
DEFAULT_METERS = {
    "queries": Meter("queries", "rag_api_queries", "RAG API billable queries", "billable_queries")
}
USAGE_COLUMNS = ("billable_queries", "tokens", "embeddings")


@dataclass(frozen=True)
class Catalog:
    """All plans, the currency, the trial length and the billed usage meters."""

    currency: str
    trial_days: int
    plans: dict[str, Plan]
    meters: dict[str, Meter] = field(default_factory=lambda: dict(DEFAULT_METERS))
    # [tax] automatic = true: subscriptions are created with Stripe's automatic tax, and a tenant
    # Stripe Tax cannot locate is refused at onboarding (lib/tax/location.py).
    automatic_tax: bool = False

    def plan(self, key: str) -> Plan:
        """The plan by key, or a clear error listing the plans that exist."""
        try:
            return self.plans[key]
        except KeyError:
            known = ", ".join(sorted(self.plans))
            raise BillingConfigError(f"unknown plan {key!r} (known plans: {known})") from None


def no_annual_price(plan: Plan) -> str:
    """The one-line refusal for an annual cycle on a plan without a yearly fee."""
    return (
        f"plan {plan.key} has no yearly base fee: annual billing needs base_yearly_cents "
        f"in [plans.{plan.key}] of plans.toml"
    )


def check_billing_cycle(plan: Plan, cycle: str) -> str:
    """The cycle, if the plan offers it; otherwise one clear error naming what is missing."""
    if cycle not in BILLING_CYCLES:
        raise BillingConfigError(
            f"billing cycle must be one of {', '.join(BILLING_CYCLES)}, got {cycle!r}"
        )
    if cycle == ANNUAL and plan.base_yearly_cents is None:
        raise BillingConfigError(no_annual_price(plan))
    return cycle


def _yearly_cents(source: str, key: str, body: dict[str, object]) -> int | None:
    """The optional yearly base fee: a positive whole number of cents when declared."""
    if "base_yearly_cents" not in body:
        return None
    value = body["base_yearly_cents"]
    # TOML gives int, float, str or bool; only a positive integer is a price in cents (a float
    # or a string would round or parse differently from what the operator meant).
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise BillingConfigError(
            f"{source}: plan {key} base_yearly_cents must be a positive whole number of cents "
            f"(e.g. 99000 for $990.00 a year), got {value!r}"
        )
    return value


# Metrics a plan has a price for (overage_cents_per_query); a meter for anything else is unpriced.
PRICED_METRICS = frozenset({"queries"})
# The amounts every plan must state: a plan without them has no price.
PLAN_FIELDS = ("name", "base_monthly_cents", "included_queries", "overage_cents_per_query")


def _plan(source: str, key: str, body: object) -> Plan:
    """One [plans.<key>] table, or an error naming the plan and what it lacks."""
    if not isinstance(body, dict):
        raise BillingConfigError(f"{source}: plan {key} is not a table of fields")
    missing = [f for f in PLAN_FIELDS if f not in body]
    if missing:
        unpriced = {"base_monthly_cents", "overage_cents_per_query"} & set(missing)
        raise BillingConfigError(
            f"{source}: invalid plan catalog: plan {key} "
            f"{'has no price: ' if unpriced else ''}missing {', '.join(missing)}"
        )
    yearly = _yearly_cents(source, key, body)
    try:
        overage = Decimal(str(body["overage_cents_per_query"]))
        if not overage.is_finite():
            raise ValueError(f"overage_cents_per_query must be a finite number, got {overage}")
        return Plan(
            base_yearly_cents=yearly,
            key=key,
            name=str(body["name"]),
            base_monthly_cents=_whole("base_monthly_cents", body["base_monthly_cents"]),
            included_queries=_whole("included_queries", body["included_queries"]),
            overage_cents_per_query=overage,
        )
    except (ValueError, TypeError, ArithmeticError) as exc:
        raise BillingConfigError(f"{source}: plan {key} has an invalid amount ({exc})") from None


def _automatic_tax(source: str, table: object) -> bool:
    """The `[tax]` table's `automatic` switch (absent: off), or an error naming it."""
    if not isinstance(table, dict):
        raise BillingConfigError(f"{source}: [tax] is not a table")
    unknown = sorted(set(table) - {"automatic"})
    if unknown:
        raise BillingConfigError(f"{source}: [tax] has unknown setting {', '.join(unknown)}")
    value = table.get("automatic", False)
    if not isinstance(value, bool):
        raise BillingConfigError(f"{source}: [tax] automatic must be true or false, got {value!r}")
    return value


# The catalog file to use instead of the packaged plans.toml (read when a catalog is loaded).
CATALOG_PATH_ENV = "BILLING_PLAN_CATALOG"


def _whole(name: str, value: object) -> int:
    """A count or an amount of cents, refused unless it is a whole number.

    int() would truncate 2900.5 to 2900 and read `true` as 1: a catalog typo would then bill
    other amounts than the ones written, silently.
    """
    if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise ValueError(f"{name} must be a whole number, got {value!r}")
    return int(value)  # type: ignore[call-overload]


def load_catalog(path: Path | None = None) -> Catalog:
    """Read and validate the catalog file (BILLING_PLAN_CATALOG, else the packaged plans.toml)."""
    if path is None and os.environ.get(CATALOG_PATH_ENV):
        path = Path(os.environ[CATALOG_PATH_ENV])
    if path is None:
        text = resources.files("billing_pipelines").joinpath("plans.toml").read_text()
        source = "plans.toml"
    else:
        try:
            text = path.read_text()
        except OSError as exc:
            raise BillingConfigError(
                f"plan catalog {path} cannot be read ({exc.strerror or exc}); "
                f"check {CATALOG_PATH_ENV} or the path given"
            ) from None
        source = str(path)
    try:
        raw = tomllib.loads(text)
        plans = {key: _plan(source, key, body) for key, body in raw["plans"].items()}
        meters = {
            key: Meter(
                metric=key,
                event_name=str(body["event_name"]),
                display_name=str(body.get("display_name", key)),
                usage_column=str(body["usage_column"]),
            )
            for key, body in raw.get("meters", {}).items()
        } or dict(DEFAULT_METERS)
        catalog = Catalog(
            str(raw["currency"]),
            _whole("trial_days", raw["trial_days"]),
            plans,
            meters,
            automatic_tax=_automatic_tax(source, raw.get("tax", {})),
        )
    except (KeyError, ValueError, TypeError, ArithmeticError, tomllib.TOMLDecodeError) as exc:
        raise BillingConfigError(f"{source}: invalid plan catalog ({exc})") from None
    if catalog.trial_days < 0:
        raise BillingConfigError(f"{source}: trial_days must be >= 0, got {catalog.trial_days}")
    for plan in plans.values():
        if plan.base_monthly_cents < 0 or plan.included_queries < 0:
            raise BillingConfigError(f"{source}: plan {plan.key} has a negative amount")
        if plan.overage_cents_per_query <= 0:
            raise BillingConfigError(f"{source}: plan {plan.key} has no overage price")
    if "queries" not in meters:
        raise BillingConfigError(f"{source}: no [meters.queries]: every plan bills queries")
    unpriced = sorted(set(meters) - PRICED_METRICS)
    if unpriced and plans:
        # Every plan's subscription gets one metered price per meter (by lookup key), but plans
        # price queries only: such a meter would collect usage nobody is billed for, and
        # onboarding would fail only after creating the Stripe customer.
        many = len(plans) > 1
        raise BillingConfigError(
            f"{source}: plan{'s' if many else ''} {', '.join(sorted(plans))} "
            f"{'have' if many else 'has'} no price for metric "
            f"{', '.join(unpriced)} ([meters.{unpriced[0]}]): plans price only "
            f"{', '.join(sorted(PRICED_METRICS))} (overage_cents_per_query); remove the meter"
        )
    for meter in meters.values():
        if meter.usage_column not in USAGE_COLUMNS:
            known = ", ".join(USAGE_COLUMNS)
            raise BillingConfigError(
                f"{source}: meter {meter.metric} reads unknown usage column "
                f"{meter.usage_column!r} (known: {known})"
            )
    return catalog
