"""The simulated month: a full billing period and renewal, driven day by day on a test clock.

Everything runs for real: embedded PostgreSQL, the chDB warehouse bridge, the Stripe sandbox
(in this process, so deliveries can be awaited), the webhook receiver on loopback, and the
project's own assets, sensors and jobs on the Dagster instance. Only the daemon is replaced:
`SensorPump` evaluates the sensors and launches what they request, honouring run_keys, as the
daemon would, so the demo does not wait for the daemon's 30-second ticks.
"""

from __future__ import annotations

import os
import random
import re
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import Any

import dagster as dg
import psycopg
import stripe
import uvicorn
from dateutil.relativedelta import relativedelta
from psycopg import sql
from psycopg.rows import dict_row

from billing_pipelines.lib.catalog.plans import CATALOG_PATH_ENV, load_catalog
from billing_pipelines.lib.lifecycle import actions as lifecycle
from billing_pipelines.lib.reconciliation.invoice_totals import billed_totals
from billing_pipelines.lib.stripe import client as stripe_api
from billing_pipelines.lib.stripe.snapshots import tax_cents
from billing_pipelines.lib.tax.location import TaxLocation, tax_location
from billing_pipelines.lib.usage import warehouse
from billing_pipelines.lib.webhooks import queue as webhook_queue
from billing_pipelines.runs import execute
from billing_pipelines.webhooks.app import ReceiverConfig, create_app
from billing_sandbox import generation_process, instance_probes
from billing_sandbox.demo import demo_tenants
from billing_sandbox.parallel import each_in_threads
from billing_sandbox.services import free_port
from billing_sandbox.stripe import Chaos, SandboxHandle, Settings, run_in_thread

Echo = Callable[[str], object]
HOUR, DAY = 3600, 86_400
SANDBOX_KEY = "sk_test_billing_pipelines_demo"
# The sensors the daemon would tick; the pump evaluates them in this order.
PUMPED_SENSORS = ("webhook_events_sensor", "dunning_sensor", "notification_outbox_sensor")


# Pumps after the last day before the month is judged, each of up to 20 rounds: enough for the
# backlog thousands of tenants leave, bounded so that a sensor that never settles cannot hang it.
FINAL_PUMPS = 50

# Tenants onboarded at once: enough that Stripe's pacing (80 requests/s at live limits, 20/s
# per endpoint), not the round trips of one sign-up after another, bounds the phase; few enough
# that the billing database's connections and the GIL are not the bottleneck instead.
ONBOARDING_WORKERS = 8

# The budget settings the month sets for its runs (and puts back afterwards).
LIMIT_SETTINGS = ("STRIPE_REQUESTS_PER_SECOND", "STRIPE_METER_EVENTS_PER_SECOND")


@dataclass(frozen=True)
class MonthLimits:
    """Stripe's rate limits for the month: the sandbox's, and the budgets of every client."""

    sandbox: dict[str, Any]  # run_in_thread's rate limit options (floats)
    settings: dict[str, str]  # environment for the runs' clients (LIMIT_SETTINGS)
    client: stripe_api.RateLimits  # the month's own client (onboarding, stories, report)
    push_run_config: dict[str, Any] | None  # the meter push's own pace


def stripe_rate_limits(mode: str) -> MonthLimits:
    """Test mode (the sandbox's and the clients' defaults) or live mode's limits.

    Live mode (docs.stripe.com/rate-limits): 100 requests/s for the account, 25/s per endpoint,
    and meter events under their own 1,000/s; every client takes the usual 80 % share of each.
    """
    if mode == "test":
        return MonthLimits({}, {}, stripe_api.RateLimits.for_key(SANDBOX_KEY), None)
    if mode != "live":
        raise ValueError(f"Stripe limits are 'test' or 'live', not {mode!r}")
    share = stripe_api.DEFAULT_SHARE
    account = stripe_api.STRIPE_LIVE_GLOBAL_LIMIT * share
    meters = stripe_api.STRIPE_LIVE_METER_EVENTS_LIMIT * share
    return MonthLimits(
        sandbox={
            "rate_limit": stripe_api.STRIPE_LIVE_GLOBAL_LIMIT,
            "endpoint_rate_limit": stripe_api.STRIPE_ENDPOINT_LIMIT,
            "meter_events_rate_limit": stripe_api.STRIPE_LIVE_METER_EVENTS_LIMIT,
        },
        settings={
            "STRIPE_REQUESTS_PER_SECOND": f"{account:g}",
            "STRIPE_METER_EVENTS_PER_SECOND": f"{meters:g}",
        },
        client=stripe_api.RateLimits.for_key(
            SANDBOX_KEY, global_per_second=account, meter_events_per_second=meters
        ),
        push_run_config={
            "ops": {"stripe_meter_reports": {"config": {"requests_per_second": meters}}}
        },
    )


@dataclass
class SensorPump:
    """Evaluates sensors and runs their requests in-process, skipping run_keys seen before."""

    definitions: dg.Definitions
    instance: dg.DagsterInstance
    # Resources already set up (see `sensor_resources`); unset, each tick sets them up afresh.
    resources: Mapping[str, dg.ResourceDefinition] | None = None
    run_keys: set[str] = field(default_factory=set)
    cursors: dict[str, str | None] = field(default_factory=dict)
    runs: Counter[str] = field(default_factory=Counter)
    failed: list[str] = field(default_factory=list)
    # Whether the last pump ended with a round in which no sensor asked for a new run (False:
    # it stopped at max_rounds with work still being asked for).
    settled: bool = True

    def pump(self, max_rounds: int = 20) -> int:
        """Tick every sensor until none requests a new run; returns the runs launched."""
        launched = 0
        resources = self.resources or self.definitions.resources or {}
        for _ in range(max_rounds):
            new = 0
            for name in PUMPED_SENSORS:
                sensor = self.definitions.resolve_sensor_def(name)
                with dg.build_sensor_context(
                    instance=self.instance, cursor=self.cursors.get(name), resources=resources
                ) as context:
                    result = sensor(context)
                if not isinstance(result, dg.SensorResult):
                    continue
                self.cursors[name] = result.cursor
                assert sensor.job_name is not None, f"{name} targets no job"
                job = self.definitions.resolve_job_def(sensor.job_name)
                for request in result.run_requests or []:
                    if request.run_key in self.run_keys:
                        continue
                    if request.run_key:
                        self.run_keys.add(request.run_key)
                    # Launched with the code location's origin, as the daemon's runs are.
                    outcome = execute(
                        job.name,
                        run_config={
                            **(request.run_config or {}),
                            "loggers": {"console": {"config": {"log_level": "CRITICAL"}}},
                        },
                        instance=self.instance,
                        tags={**request.tags, "demo": "simulated_month"},
                    )
                    self.runs[job.name] += 1
                    if not outcome.success:
                        self.failed.append(f"{job.name} {request.run_key}")
                    new += 1
            launched += new
            if new == 0:
                self.settled = True
                return launched
        self.settled = False
        return launched


@contextmanager
def sensor_resources(definitions: dg.Definitions) -> Iterator[dict[str, dg.ResourceDefinition]]:
    """The pumped sensors' resources, set up once for the month rather than once per tick.

    The daemon sets them up on every tick; over ~250 ticks that is a connection pool opened
    and closed each time, which the month does not need to re-prove.
    """
    keys: set[str] = set()
    for name in PUMPED_SENSORS:
        keys |= definitions.resolve_sensor_def(name).required_resource_keys
    declared = definitions.resources or {}
    with dg.build_resources({key: declared[key] for key in keys}) as live:
        yield {key: dg.ResourceDefinition.hardcoded_resource(getattr(live, key)) for key in keys}


class _Receiver:
    """The project's webhook receiver under uvicorn on a loopback port, in a thread."""

    def __init__(self, database_url: str, secret: str, port: int) -> None:
        config = ReceiverConfig(database_url=database_url, secrets=[secret])
        self.server = uvicorn.Server(
            uvicorn.Config(create_app(config), host="127.0.0.1", port=port, log_level="warning")
        )
        self.thread = threading.Thread(target=self.server.run, name="receiver", daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 15
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the webhook receiver did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@dataclass(frozen=True)
class Cast:
    """Who each simulated tenant is: plan, card story and usage."""

    tenant_id: str
    plan: str
    monthly_queries: int
    card: str  # good | fails_later | recovers | declined_at_signup | none_trial | good_trial
    # monthly, or annual: the plan's yearly base fee beside monthly usage (a mixed interval
    # subscription); annual tenants are on a plan that declares one.
    billing_cycle: str = "monthly"
    # The billing address Stripe Tax locates the tenant by (see DEMO_LOCATIONS).
    location: TaxLocation | None = None


# Where the simulated tenants are, in turn: taxed at the Stripe sandbox's TEST DATA rates (US,
# Canada, Germany), reverse charged (a German business with a VAT id) and not collected (the
# United Kingdom: no registration there). The rates are made-up test data, not real ones.
DEMO_LOCATIONS = (
    tax_location(country="US", postal_code="94103", state="CA"),
    tax_location(country="CA", state="ON"),
    tax_location(country="DE", city="Berlin"),
    tax_location(country="DE", city="Munich", tax_ids=["eu_vat:DE123456789"]),
    tax_location(country="GB", city="London"),
    tax_location(country="US", postal_code="10001"),
)


CARD_MIX = (
    ("good", 0.52),
    ("good_trial", 0.14),
    ("none_trial", 0.08),
    ("fails_later", 0.10),
    ("recovers", 0.10),
    ("declined_at_signup", 0.06),
)


def cast(tenant_count: int, seed: int) -> list[Cast]:
    """Deterministic tenants with a card story each (every story appears at least once).

    Some pay yearly: the tenant with a card on a trial, and every other later tenant with a
    good card (from the second on), so a month of ten holds a trial that converts to annual
    and annual tenants whose monthly usage period closes inside the month. An annual tenant
    whose drawn plan has no yearly fee is put on one that has (the first such plan).
    """
    rng = random.Random(seed + 1)
    stories = [story for story, _ in CARD_MIX]
    yearly = [key for key, plan in load_catalog().plans.items() if plan.base_yearly_cents]
    people = []
    for index, tenant in enumerate(demo_tenants(tenant_count, seed)):
        if index < len(stories):
            story = stories[index]
        else:
            story = rng.choices(stories, weights=[w for _, w in CARD_MIX])[0]
        annual = bool(yearly) and (
            story == "good_trial"
            and index == 1
            or (story == "good" and index >= len(stories) and index % 2 == 0)
        )
        plan = tenant.plan if not annual or tenant.plan in yearly else yearly[0]
        location = DEMO_LOCATIONS[index % len(DEMO_LOCATIONS)]
        people.append(
            Cast(
                tenant.tenant_id,
                plan,
                tenant.monthly_queries,
                story,
                "annual" if annual else "monthly",
                location,
            )
        )
    return people


def taxed_catalog_file(folder: Path) -> Path:
    """The catalog in use with `[tax] automatic = true`, written into `folder`."""
    configured = os.environ.get(CATALOG_PATH_ENV)
    text = (
        Path(configured).read_text()
        if configured
        else resources.files("billing_pipelines").joinpath("plans.toml").read_text()
    )
    if re.search(r"(?m)^\[tax\]", text):
        text = re.sub(r"(?m)^automatic\s*=\s*false", "automatic = true", text)
    else:
        text += "\n[tax]\nautomatic = true\n"
    path = folder / "plans.toml"
    path.write_text(text)
    return path


def month_start(today: date) -> date:
    """The simulated period: the first of the month that began at least 45 days ago."""
    back = today - timedelta(days=45)
    return back.replace(day=1)


def _reset(database_url: str, clickhouse: Any) -> None:
    """The demo owns the embedded services: start from empty billing tables and warehouse."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        tables = [
            row[0]
            for row in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public' "
                "AND tablename <> 'billing_schema_version'"
            )
        ]
        if tables:
            conn.execute(
                sql.SQL("TRUNCATE {} RESTART IDENTITY CASCADE").format(
                    sql.SQL(", ").join(sql.Identifier(t) for t in tables)
                )
            )
    warehouse.ensure_usage_schema(clickhouse)
    warehouse.clear_usage_events(clickhouse)


def failed_checks_since(instance: dg.DagsterInstance, since: datetime) -> dict[str, str]:
    """Checks whose latest evaluation (per check and partition) in runs since then failed.

    Keyed `check` or `check [partition]`, valued with the check's own description.
    """
    latest: dict[tuple[str, str | None], Any] = {}
    records = instance.get_run_records(filters=dg.RunsFilter(created_after=since), ascending=True)
    for record in records:
        for entry in instance.all_logs(
            record.dagster_run.run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION
        ):
            if entry.dagster_event is None:
                continue
            evaluation = entry.dagster_event.asset_check_evaluation_data
            latest[(evaluation.check_name, evaluation.partition)] = evaluation
    return {
        name + (f" [{partition}]" if partition else ""): evaluation.description
        or "failed (see its metadata in the UI)"
        for (name, partition), evaluation in latest.items()
        if not evaluation.passed
    }


def _end_orphaned_runs(instance: dg.DagsterInstance) -> list[str]:
    """End the runs a killed demo left started: they hold the Stripe pool's only slot.

    The demo runs its jobs in its own process, so on the sandbox instance a run still marked
    started when a new month begins belongs to a process that is gone; left alone, the next
    run that needs the pool would wait for it forever.
    """
    unfinished = instance.get_run_records(
        filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.STARTING])
    )
    for record in unfinished:
        run = record.dagster_run
        instance.report_run_failed(run, "its process was gone when the next demo started")
        instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
    return [r.dagster_run.run_id for r in unfinished]


def unhandled_webhook_events(database_url: str) -> int:
    """Webhook events not yet processed, ignored or dead-lettered (pending, failed or claimed)."""
    table = webhook_queue.EVENTS_TABLE
    with psycopg.connect(database_url) as conn:
        depth = webhook_queue.events_queue().depth(conn)
    return sum(
        depth.get(status, 0)
        for status in (table.pending_status, table.failed_status, table.claimed_status)
    )


def _advance(sandbox: SandboxHandle, clock: str, to: int) -> None:
    sandbox.advance_clock(clock, to)
    # The business clock follows the test clock: health, lag and snapshot dates are judged on
    # the simulated day (runs in this process read it when they start).
    os.environ["BUSINESS_CLOCK"] = business_instant(to)
    assert sandbox.state.webhooks is not None
    sandbox.state.webhooks.drain(30)


def business_instant(timestamp: int) -> str:
    """A test clock's time as the BUSINESS_CLOCK setting (ISO 8601, UTC)."""
    return datetime.fromtimestamp(timestamp, UTC).isoformat()


@dataclass(frozen=True)
class DayContext:
    """What a test hook may touch on a simulated day (after the clock moved, before sensors)."""

    offset: int
    day: date
    client: stripe.StripeClient
    sandbox: SandboxHandle
    clock: str
    database_url: str
    pump: SensorPump
    people: list[Cast]


@dataclass
class MonthResult:
    """What happened, for the report and the tests."""

    start: date
    days: int
    people: list[Cast]
    onboarding: Counter[str]
    runs: Counter[str]
    failed_runs: list[str]
    seconds: float
    client: stripe.StripeClient
    database_url: str
    customers: dict[str, str]
    timings: dict[str, float]
    stripe_requests: Counter[str]  # by phase
    stripe_throttled: int  # answered 429 by the sandbox's rate limiter
    checks: dict[str, bool]
    reconciliation_ok: bool
    # What each failing check says (who is affected, what to do), by check name.
    findings: dict[str, str] = field(default_factory=dict)
    # The test clock's time when the month ended: the business clock the UI should use.
    business_clock: str | None = None
    # The month's Dagster instance (pooled storage connections): runs a caller starts while the
    # month still serves reuse it rather than opening a connection per stored event.
    instance: dg.DagsterInstance | None = None
    # Webhook events still queued (pending, failed or claimed) when the month was judged.
    webhook_events_left: int = 0


def simulate(
    *,
    database_url: str,
    clickhouse_url: str,
    tenant_count: int = 50,
    seed: int = 7,
    start: date | datetime | None = None,
    echo: Echo = print,
    usage_scale: float = 1.0,
    on_done: Callable[[MonthResult], object] | None = None,
    webhook_chaos: Chaos | None = None,
    hooks: Mapping[int, Callable[[DayContext], object]] | None = None,
    automatic_tax: bool = True,
    stripe_limits: str = "test",
) -> MonthResult:
    """Onboard tenants on a test clock, then drive one full period and its renewal day by day.

    `on_done` runs while the sandbox still serves (the report reads invoices from it).
    `automatic_tax`: the month's catalog turns Stripe's automatic tax on (every run of the
    month reads it), and each tenant has a billing address (DEMO_LOCATIONS).
    `stripe_limits`: "test" (the default) runs under Stripe's test-mode limits; "live" under
    live mode's (see `LIVE_LIMITS`), for measuring what the month costs an account in production.
    """
    limits = stripe_rate_limits(stripe_limits)
    started = time.monotonic()
    timings: dict[str, float] = {}  # seconds per phase
    calls: Counter[str] = Counter()  # Stripe requests per phase
    seen = {"requests": 0}

    def timed(phase: str, since: float) -> float:
        now = time.monotonic()
        timings[phase] = timings.get(phase, 0.0) + now - since
        total = sandbox.requests
        calls[phase] += total - seen["requests"]
        seen["requests"] = total
        return now

    # The month starts at any instant (a date is its 00:00 UTC): the sign-up day and the
    # renewal day are then split at that instant (see the metering boundary policy).
    if isinstance(start, datetime):
        instant = start.astimezone(UTC)
    else:
        day0 = start or month_start(datetime.now(UTC).date())
        instant = datetime.combine(day0, datetime.min.time(), tzinfo=UTC)
    first = instant.date()
    # One billing period: Stripe anchors monthly subscriptions on their start instant.
    days = (first + relativedelta(months=1) - first).days
    t0 = int(instant.timestamp())
    midnight0 = int(datetime.combine(first, datetime.min.time(), tzinfo=UTC).timestamp())
    saved_catalog = os.environ.get(CATALOG_PATH_ENV)
    if automatic_tax:
        # Every run of the month loads the catalog itself: point them all at the taxed one.
        os.environ[CATALOG_PATH_ENV] = str(taxed_catalog_file(Path(tempfile.mkdtemp())))
    catalog = load_catalog()
    clickhouse = warehouse.connect(clickhouse_url)
    _reset(database_url, clickhouse)

    # Stripe's test-mode limits (the sandbox's default) or live mode's: every call is paced and
    # retried.
    sandbox = run_in_thread(port=0, webhook_chaos=webhook_chaos, **limits.sandbox)
    # Stripe retries webhooks for days; a demo month compresses that to seconds.
    # The account's finalization grace period is 48 hours, as the boundary policy requires.
    sandbox.state.settings = Settings(
        webhook_backoff_seconds=[0.2, 0.5, 1.0, 2.0], finalization_grace_seconds=48 * HOUR
    )
    receiver_port = free_port()
    # Runs read Stripe's address from the environment: point them at this sandbox, and put
    # back whatever was there when the month is over.
    saved_env = {
        key: os.environ.get(key)
        for key in ("STRIPE_API_BASE", "STRIPE_API_KEY", "BUSINESS_CLOCK", *LIMIT_SETTINGS)
    }
    # The runs' clients read their budget from the environment.
    os.environ.update(limits.settings)
    os.environ["BUSINESS_CLOCK"] = business_instant(t0)
    os.environ["STRIPE_API_BASE"] = sandbox.url
    os.environ["STRIPE_API_KEY"] = SANDBOX_KEY
    client = stripe_api.make_client(SANDBOX_KEY, api_base=sandbox.url, limits=limits.client)
    endpoint = client.v1.webhook_endpoints.create(
        {"url": f"http://127.0.0.1:{receiver_port}/webhooks/stripe", "enabled_events": ["*"]}
    )
    assert endpoint.secret
    receiver = _Receiver(database_url, endpoint.secret, receiver_port)
    from billing_pipelines.definitions import defs
    from billing_pipelines.runs import materialize_asset, materialize_days

    definitions = defs()
    instance = dg.DagsterInstance.get()
    # Dagster's Postgres storages open a new connection per stored event unless told they are
    # a long-lived process; the month is one, and ~120 runs of event writes add up.
    instance.optimize_for_webserver(statement_timeout=60_000, pool_recycle=3600, max_overflow=4)
    # Its storages would reflect their tables' columns again on most reads and writes.
    instance_probes.install()
    _end_orphaned_runs(instance)
    month_began = datetime.now(UTC)
    pump = SensorPump(definitions, instance)
    cleanup = ExitStack()
    try:
        pump.resources = cleanup.enter_context(sensor_resources(definitions))
        people = cast(tenant_count, seed)
        # The month's usage is drawn day by day in a process of its own while the catalog
        # syncs, the tenants sign up, their first webhook runs go and the first days are pushed:
        # nothing reads a day's usage before the business clock has entered it, and the month
        # waits for each day's rows before its clock enters that day.
        generation = cleanup.enter_context(
            generation_process.drawing(
                clickhouse_url,
                [p.tenant_id for p in people],
                start=first,
                days=days,
                seed=seed,
                monthly_queries={
                    p.tenant_id: max(1, int(p.monthly_queries * usage_scale)) for p in people
                },
            )
        )
        echo(f"    Stripe sandbox {sandbox.url}, webhook receiver :{receiver_port}")
        if not materialize_asset("stripe_catalog"):
            raise RuntimeError("stripe_catalog failed")
        clock = str(client.v1.test_helpers.test_clocks.create({"frozen_time": t0}).id)
        onboarding: Counter[str] = Counter()
        customers: dict[str, str] = {}
        echo(f"    onboarding {len(people)} tenants on a test clock at {first} ...")
        mark = time.monotonic()
        # A few tenants at a time: one tenant's sign-up is ~9 requests in a row, each waiting
        # for its answer, so alone they leave most of the account's rate budget unused; the
        # client's shared budget paces them all together.
        onboarding.update(
            each_in_threads(
                people,
                lambda person: _onboard(database_url, client, catalog, clock, person),
                ONBOARDING_WORKERS,
            )
        )
        with psycopg.connect(database_url) as conn:
            customers = dict(
                conn.execute("SELECT tenant_id, stripe_customer_id FROM tenants").fetchall()
            )
        mark = timed("onboarding", mark)
        pump.pump()
        timed("sensors and their runs", mark)
        last_drawn = first + timedelta(days=days - 1)
        # Day by day through the period, then ten days of renewal, finalization and retries.
        # Days holding a period boundary when the month does not start at 00:00 UTC: trial
        # ends and the renewal, at the start's time of day.
        boundary_days = (
            {first + timedelta(days=catalog.trial_days), first + timedelta(days=days)}
            if t0 != midnight0
            else set()
        )
        for offset in range(days + 10):
            day = first + timedelta(days=offset)
            mark = time.monotonic()
            # The clock is about to enter the next day: its rows and today's must be stored.
            generation.wait_through(min(day + timedelta(days=1), last_drawn))
            mark = timed("usage generation", mark)
            # 00:30 the next morning, as the 00:10 schedule pushes yesterday.
            _advance(sandbox, clock, midnight0 + (offset + 1) * DAY + 30 * 60)
            mark = timed("stripe clock and webhooks", mark)
            # Every day is pushed, as the daily schedule does, including the renewal days with
            # no usage: they send nothing, and usage sync stays current on the business clock.
            # A day that has not ended on the wall clock has no partition yet (a month that
            # started 40 days ago renews into today).
            today = datetime.now(UTC).date()
            pushes = [day] if day < today else []
            for split in sorted(boundary_days):
                # The late-event schedule pushes a day again on the following nights: a split
                # day's part from its boundary goes once that period's invoice is final. (The
                # month pushes only these days again; no other day has a boundary here.)
                if 0 <= offset - (split - first).days < 3 and split not in pushes and split < today:
                    pushes.append(split)
            for pushed in pushes:
                for _, ok in materialize_days(
                    "usage_to_stripe_job",
                    pushed,
                    pushed,
                    echo=None,
                    run_config=limits.push_run_config,
                    instance=instance,
                ):
                    if not ok:
                        pump.failed.append(f"usage_to_stripe_job {pushed}")
            mark = timed("usage and meter push runs", mark)
            _story_events(client, database_url, catalog, people, offset, days)
            if hooks and offset in hooks:
                hooks[offset](
                    DayContext(offset, day, client, sandbox, clock, database_url, pump, people)
                )
            launched = pump.pump()
            timed("sensors and their runs", mark)
            what = "usage pushed" if offset < days else "renewal, payments and retries"
            echo(
                f"    day {offset + 1:>2}/{days + 10} {day}: {what}, {launched} sensor run(s), "
                f"{time.monotonic() - started:.0f}s"
            )
        drawn = generation.result()
        summary = drawn.summary
        echo(
            f"    {summary.rows_inserted:,} usage events for {first} .. {last_drawn} "
            f"({summary.duplicates:,} cache duplicates, {summary.late_events:,} late), drawn day "
            f"by day in {drawn.seconds:.0f}s beside the sign-ups and the first days "
            f"(the month waited {timings['usage generation']:.0f}s for it)"
        )
        # Let the last finalizations, payments and deliveries land. A pump stops after 20
        # rounds; the month is judged only once every sensor has nothing new to run (at
        # thousands of tenants the sign-ups alone queue tens of thousands of webhook events).
        _advance(sandbox, clock, midnight0 + (days + 10) * DAY + 2 * HOUR)
        for _ in range(FINAL_PUMPS):
            pump.pump()
            if pump.settled:
                break
        events_left = unhandled_webhook_events(database_url)
        mark = time.monotonic()
        reconciliation = execute(
            "reconciliation_job",
            instance=instance,
            run_config={"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}},
            tags={"demo": "simulated_month"},
        )
        evaluations = [
            e.asset_check_evaluation_data
            for e in reconciliation.all_events
            if e.event_type == dg.DagsterEventType.ASSET_CHECK_EVALUATION
        ]
        checks = {e.check_name: e.passed for e in evaluations}
        findings = {
            e.check_name: e.description or "failed (see its metadata in the UI)"
            for e in evaluations
            if not e.passed
        }
        # Checks evaluated by the month's other runs (the daily pushes, the sensors' jobs) are
        # reported too: a check failing there is as visible in the UI as in reconciliation.
        for name, description in failed_checks_since(instance, month_began).items():
            if name not in checks:
                checks[name] = False
                findings[name] = description
        # Failed checks are findings (drift is an alert, not a crash): the report lists them,
        # and a run that failed outright is kept apart from the sensors' runs.
        timed("reconciliation", mark)
        sandbox.state.snapshot(f"{instance.root_directory}/stripe_sandbox_state.pickle")
        result = MonthResult(
            start=first,
            days=days,
            people=people,
            onboarding=onboarding,
            runs=pump.runs,
            failed_runs=pump.failed,
            seconds=time.monotonic() - started,
            client=client,
            database_url=database_url,
            customers=customers,
            timings=timings,
            stripe_requests=calls,
            stripe_throttled=sandbox.throttled,
            checks=checks,
            reconciliation_ok=reconciliation.success,
            findings=findings,
            business_clock=os.environ.get("BUSINESS_CLOCK"),
            instance=instance,
            webhook_events_left=events_left,
        )
        if on_done is not None:
            on_done(result)
        return result
    finally:
        cleanup.close()
        receiver.stop()
        sandbox.stop()
        for key, value in {**saved_env, CATALOG_PATH_ENV: saved_catalog}.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _onboard(
    database_url: str, client: stripe.StripeClient, catalog: Any, clock: str, person: Cast
) -> str:
    card = {
        "good": "pm_card_visa",
        "fails_later": "pm_card_visa",
        "recovers": "pm_card_visa",
        "good_trial": "pm_card_visa",
        "declined_at_signup": "pm_card_visa_chargeDeclinedInsufficientFunds",
        "none_trial": None,
    }[person.card]
    trial = person.card in {"good_trial", "none_trial"}
    request = lifecycle.OnboardRequest(
        tenant_id=person.tenant_id,
        name=f"Tenant {person.tenant_id}",
        email=f"billing+{person.tenant_id}@example.com",
        plan=person.plan,
        payment_method=card,
        trial=trial,
        test_clock=clock,
        billing_cycle=person.billing_cycle,
        tax_location=person.location,
    )
    with psycopg.connect(database_url, row_factory=dict_row) as conn:
        try:
            with conn.transaction():
                lifecycle.onboard(conn, client, catalog, request)
            return person.card
        except stripe.CardError:
            # The bank refused the card when it was attached: sign up on a trial without it,
            # as a signup form would, and let the trial-reminder path ask for a card.
            with conn.transaction():
                lifecycle.onboard(
                    conn,
                    client,
                    catalog,
                    lifecycle.OnboardRequest(
                        **{**request.__dict__, "payment_method": None, "trial": True}
                    ),
                )
            return "declined_at_signup"


def _story_events(
    client: stripe.StripeClient,
    database_url: str,
    catalog: Any,
    people: list[Cast],
    offset: int,
    days: int,
) -> None:
    """Scripted customer behaviour: cards that start failing mid-month, and recoveries."""
    actions: list[tuple[str, str]] = []
    if offset == 10:
        # Their card expires: every later charge fails.
        actions = [
            (p.tenant_id, "pm_card_chargeCustomerFail")
            for p in people
            if p.card in {"fails_later", "recovers"}
        ]
    elif offset == days + 4:
        # After the first dunning emails, some customers put in a working card.
        actions = [(p.tenant_id, "pm_card_visa") for p in people if p.card == "recovers"]
    if not actions:
        return
    with psycopg.connect(database_url, row_factory=dict_row) as conn:
        for tenant_id, card in actions:
            with conn.transaction():
                lifecycle.update_payment_method(
                    conn, client, catalog, tenant_id, card, actor="demo.customer"
                )


def report(result: MonthResult, echo: Echo = print) -> dict[str, int]:
    """The readable end-of-month report; returns the numbers it printed (for tests)."""
    invoices = list(result.client.v1.invoices.list({"limit": 100}).auto_paging_iter())
    ours = [i for i in invoices if i.customer in set(result.customers.values())]
    paid = [i for i in ours if i.status == "paid"]
    recovered = [i for i in paid if (i.attempt_count or 0) > 1]
    failed = [i for i in ours if i.status in {"open", "uncollectible"} and (i.attempt_count or 0)]
    revenue = sum(int(i.amount_paid or 0) for i in paid)
    with psycopg.connect(result.database_url, row_factory=dict_row) as conn:
        steps = {
            int(r["step"]): int(r["n"])
            for r in conn.execute(
                "SELECT step, count(*) AS n FROM dunning_actions GROUP BY step"
            ).fetchall()
        }
        statuses = Counter(
            r["billing_status"]
            for r in conn.execute("SELECT billing_status FROM tenants").fetchall()
        )
        reactivated = conn.execute(
            "SELECT count(DISTINCT entity_id) AS n FROM audit_log "
            "WHERE action = 'tenant.reactivate'"
        ).fetchone()
        emails = conn.execute(
            "SELECT template, count(*) AS n FROM notification_outbox GROUP BY template"
        ).fetchall()
    trials = [p for p in result.people if p.card in {"good_trial", "none_trial"}]
    converted = sum(1 for p in trials if p.card == "good_trial")
    numbers = {
        "invoices": len(ours),
        "paid": len(paid),
        "recovered": len(recovered),
        "failed": len(failed),
        "revenue_cents": revenue,
        "suspended": statuses.get("suspended", 0) + statuses.get("unpaid", 0),
        "reactivated": int(reactivated["n"]) if reactivated else 0,
    }
    echo(
        f"    invoices issued {len(ours)}: paid {len(paid)} (recovered after a failure "
        f"{len(recovered)}), still failing {len(failed)}"
    )
    echo(f"    revenue collected ${revenue / 100:,.2f}")
    # Finance's three numbers over the finalized invoices: before tax, Stripe Tax's, after tax.
    billed = billed_totals(
        (
            str(i.status),
            str(i.currency),
            i.subtotal,
            tax_cents(i.to_dict().get("total_taxes")),
            i.total,
        )
        for i in ours
    )
    for totals in billed.values():
        echo(f"    invoiced ({totals.invoices} finalized): {totals.describe()}")
    numbers["billed_subtotal_cents"] = sum(t.subtotal for t in billed.values())
    numbers["billed_tax_cents"] = sum(t.tax for t in billed.values())
    numbers["billed_total_cents"] = sum(t.total for t in billed.values())
    funnel = ", ".join(f"step {k}: {v}" for k, v in sorted(steps.items())) or "no failures"
    echo(
        f"    dunning funnel: {funnel}; suspended now {numbers['suspended']}, "
        f"reactivated {numbers['reactivated']}"
    )
    echo(
        f"    trials: {converted} converted with a card, "
        f"{statuses.get('paused', 0)} paused at trial end without one"
    )
    echo("    tenants by status: " + ", ".join(f"{k} {v}" for k, v in sorted(statuses.items())))
    annual = [p for p in result.people if p.billing_cycle == "annual"]
    numbers["annual"] = len(annual)
    echo(
        f"    billing cycles: {len(result.people) - len(annual)} monthly, {len(annual)} annual "
        "(yearly base fee, usage billed monthly)"
    )
    echo("    emails: " + ", ".join(f"{r['template']} {r['n']}" for r in emails))
    echo(
        f"    runs launched by sensors: {sum(result.runs.values())} "
        f"({', '.join(f'{k} {v}' for k, v in sorted(result.runs.items()))}); "
        f"failed runs: {len(result.failed_runs)}; webhook events left unhandled: "
        f"{result.webhook_events_left}"
    )
    failing = sorted(name for name, passed in result.checks.items() if not passed)
    numbers["failing_checks"] = len(failing)
    echo(
        f"    asset checks: {len(result.checks)} (reconciliation's, and any that failed in the "
        "month's other runs), "
        + (f"failing: {', '.join(failing)}" if failing else "all pass")
        + ("" if result.reconciliation_ok else "; reconciliation_job FAILED (see the UI)")
    )
    for name in failing:
        echo(f"      - {name}: {result.findings.get(name, 'failed (see the UI)')}")
    audit = result.checks.get("usage_matches_invoices")
    if audit is None:
        verdict = "not evaluated"
    else:
        verdict = "zero difference" if audit else "DIFFERENCES (see usage_invoice_audit)"
    echo(f"    usage vs invoices audit (every tenant, closed period): {verdict}")
    echo(
        "    truth: distinct billable query ids (each at its first event) with timestamps in "
        "each invoice line's own [period start, period end), priced by the line's own price"
    )
    return numbers
