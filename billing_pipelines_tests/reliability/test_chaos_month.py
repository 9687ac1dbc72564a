"""A simulated month with faults injected at random (seeded): not one cent of difference.

Every day of the month draws one fault from the fault-injection suite's list, applied for real
to the running parts: Stripe answering 429s and 500s (before and after doing the work) for a
day, a webhook outage that Stripe gives up on (the recovery job fills the gap), a meter push
that dies between Stripe's acceptance and the ledger's record (with late events arriving), and
a replayed push of past days. Webhook deliveries are duplicated and reordered all month. At the
end, every tenant's invoice is audited against the warehouse truth, cent for cent.
"""

from __future__ import annotations

import random
import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any
from unittest import mock

import psycopg
import pytest
from billing_sandbox import month
from billing_sandbox.stripe import Chaos, FaultRates, SandboxHandle
from dateutil.relativedelta import relativedelta
from psycopg.rows import dict_row

from billing_pipelines.lib.metering import ledger
from billing_pipelines.lib.usage import warehouse
from billing_pipelines.lib.usage.tables import USAGE_EVENTS_COLUMNS
from billing_pipelines.runs import code_location, materialize_days
from billing_pipelines_tests.support import SimulatedCrash

# The month runs once, in the first test's set-up: 2-3 minutes idle, more on a loaded machine.
pytestmark = pytest.mark.timeout(900)

TENANTS = 6  # one per card story
SEED = 2026
START_DAY = datetime.now(UTC).date() - timedelta(days=40)  # inside the recovery job's window
# The month starts at a seeded random instant of that day, not at 00:00 UTC: the sign-up day
# and the renewal day are split at that instant (the metering boundary policy).
START = datetime.combine(START_DAY, datetime.min.time(), UTC) + timedelta(
    seconds=random.Random(SEED).randrange(1, 86_400)
)
FAULTS = ("none", "stripe_errors", "webhook_outage", "crash_in_push", "replayed_push")
WEIGHTS = (0.40, 0.20, 0.15, 0.15, 0.10)
# The recovery job lists Stripe's last 30 days of *real* time and test-clock events carry clock
# time (a known limit, see README): an outage must fall inside that window to be recoverable.
FIRST_OUTAGE_DAY = 12
BAD_DAY = FaultRates(throttle=0.1, before=0.1, after=0.1)  # 30 % of requests on a bad day


def fault_plan(days: int, seed: int) -> dict[int, str]:
    """Which fault each day of a `days`-long period (and its renewal) gets, seeded.

    A fault that lasts a day is undone by the next day's hook, after that day's push and its
    scripted customer actions (card expiry on day 10, card update on day days + 4): those days'
    eves stay quiet, since a customer's own action failing is not what this month tests.
    """
    rng = random.Random(seed)
    quiet = {0, 9, 10, days + 3, days + 4}
    plan: dict[int, str] = {}
    offset = 1
    while offset < days + 8:
        fault = "none" if offset in quiet else rng.choices(FAULTS, WEIGHTS)[0]
        if fault == "webhook_outage" and offset < FIRST_OUTAGE_DAY:
            fault = "stripe_errors"
        if fault == "crash_in_push" and offset >= days:
            fault = "replayed_push"  # after the period there is no new day to push
        plan[offset] = fault
        # Faults that last until the next day's hook leave that day fault-free.
        offset += 2 if fault in {"stripe_errors", "webhook_outage"} else 1
    # Every kind at least once, whatever the period's length: a missing kind takes the place
    # of a fault-free day where it is allowed (the draw stays seeded).
    for kind in FAULTS[1:]:
        if kind in plan.values():
            continue
        allowed = [
            day
            for day, fault in plan.items()
            if fault == "none"
            and day not in quiet
            and (day + 1 not in plan or kind not in {"stripe_errors", "webhook_outage"})
            and (kind != "webhook_outage" or day >= FIRST_OUTAGE_DAY)
            and (kind != "crash_in_push" or day < days)
        ]
        plan[rng.choice(allowed)] = kind
    return plan


class Injector:
    """Applies the plan from the month's daily hook and remembers what it did."""

    def __init__(self, plan: dict[int, str], clickhouse_url: str) -> None:
        self.plan = plan
        self.clickhouse_url = clickhouse_url
        self.applied: Counter[str] = Counter()
        self.crashed_runs = 0
        self.reruns_ok: list[bool] = []
        self.late_queries = 0
        self._undo: dict[int, str] = {}
        self.sandbox: SandboxHandle | None = None
        self.bad_day_requests = 0
        self._requests_at_start = 0

    def _requests(self) -> int:
        assert self.sandbox is not None
        app: Any = self.sandbox.server.config.app
        return sum(app.state.requests.values())

    def injected(self) -> Counter[str]:
        """What the sandbox answered with on purpose, by kind (throttle, before, after)."""
        assert self.sandbox is not None
        app: Any = self.sandbox.server.config.app
        counts = app.state.faults
        return Counter({kind: n for (kind, _), n in counts.items()})

    def hooks(self, last_day: int) -> dict[int, Any]:
        """One hook per simulated day (faults and their undoing)."""
        return {offset: self for offset in range(last_day)}

    def __call__(self, ctx: month.DayContext) -> None:
        self.sandbox = ctx.sandbox
        undo = self._undo.pop(ctx.offset, None)
        if undo == "stripe_errors":
            ctx.sandbox.state.faults = FaultRates()
            self.bad_day_requests += self._requests() - self._requests_at_start
        elif undo == "webhook_outage":
            self._endpoint(ctx, disabled=False)
            recovery = code_location().resolve_job_def("stripe_event_recovery_job")
            # On the month's own instance (pooled connections), as every run the hook starts.
            assert recovery.execute_in_process(instance=ctx.pump.instance).success
        fault = self.plan.get(ctx.offset, "none")
        if fault == "none":
            return
        self.applied[fault] += 1
        if fault == "stripe_errors":
            # Until tomorrow's hook: tonight's sensor runs and tomorrow's push see them.
            ctx.sandbox.state.faults = FaultRates(BAD_DAY.throttle, BAD_DAY.before, BAD_DAY.after)
            self._requests_at_start = self._requests()
            self._undo[ctx.offset + 1] = fault
        elif fault == "webhook_outage":
            # Stripe retries for a few (compressed) seconds, then gives up on these events.
            self._endpoint(ctx, disabled=True)
            self._undo[ctx.offset + 1] = fault
        elif fault == "crash_in_push":
            self._crash_then_rerun(ctx)
        elif fault == "replayed_push":
            first = max(ctx.day - timedelta(days=2), START_DAY)
            self.reruns_ok += [
                ok
                for _, ok in materialize_days(
                    "usage_to_stripe_job", first, ctx.day, None, instance=ctx.pump.instance
                )
            ]

    @staticmethod
    def _endpoint(ctx: month.DayContext, *, disabled: bool) -> None:
        endpoint = ctx.client.v1.webhook_endpoints.list().data[0].id
        ctx.client.v1.webhook_endpoints.update(str(endpoint), {"disabled": disabled})

    def _crash_then_rerun(self, ctx: month.DayContext) -> None:
        """Late events arrive for today; the re-push dies after Stripe accepted; run again."""
        tenants = [p.tenant_id for p in ctx.people]
        client = warehouse.connect(self.clickhouse_url)
        noon = datetime.combine(ctx.day, datetime.min.time(), tzinfo=UTC) + timedelta(hours=12)
        rows = [
            [uuid.uuid4(), f"late-{ctx.offset}-{t}-{i}", t, noon, "query", 120, 1, 30, noon]
            for t in tenants
            for i in range(3 + ctx.offset % 4)
        ]
        client.insert("usage_events", rows, column_names=list(USAGE_EVENTS_COLUMNS))
        self.late_queries += len(rows)

        def dies(conn: Any, outcomes: Any) -> None:
            raise SimulatedCrash  # Stripe accepted these day totals; the ledger never hears of it

        with mock.patch.object(ledger, "record_outcomes", dies):
            for _, ok in materialize_days(
                "usage_to_stripe_job", ctx.day, ctx.day, None, instance=ctx.pump.instance
            ):
                assert not ok, "the push should have died before recording its outcomes"
                self.crashed_runs += 1
        self.reruns_ok += [
            ok
            for _, ok in materialize_days(
                "usage_to_stripe_job", ctx.day, ctx.day, None, instance=ctx.pump.instance
            )
        ]


def _rows(url: str, query: str, *params: Any) -> list[dict[str, Any]]:
    with psycopg.connect(url, row_factory=dict_row) as conn:
        return conn.execute(query, params).fetchall()


@pytest.fixture(scope="module")
def chaos_month(embedded_services: dict[str, str]) -> dict[str, Any]:
    """Run the month under the seeded fault plan once; keep what the tests check."""
    days_in_period = (START_DAY + relativedelta(months=1) - START_DAY).days  # as the month does
    plan = fault_plan(days_in_period, SEED)
    injector = Injector(plan, embedded_services["CLICKHOUSE_URL"])
    seen: dict[str, Any] = {"injector": injector}

    def capture(result: month.MonthResult) -> None:
        seen["result"] = result
        seen["injected"] = injector.injected()
        url = result.database_url
        # Rows in retry backoff (a 429 during a handler) are due again within a minute of
        # real time: pump until the queue holds nothing pending, as the daemon would.
        assert result.instance is not None
        pump = month.SensorPump(code_location(), result.instance)
        deadline = datetime.now(UTC) + timedelta(seconds=150)
        while datetime.now(UTC) < deadline:
            pump.pump()
            pending = _rows(
                url,
                "SELECT count(*) AS n FROM webhook_events WHERE status IN ('pending', 'failed')",
            )[0]["n"]
            if pending == 0:
                break
            time.sleep(2)
        seen["queue"] = dict(
            (r["status"], r["n"])
            for r in _rows(url, "SELECT status, count(*) AS n FROM webhook_events GROUP BY 1")
        )
        seen["audit"] = _rows(
            url,
            "SELECT tenant_id, warehouse_queries, daily_usage_queries, ledger_queries, "
            "stripe_meter_queries, invoice_quantity, invoice_amount, recomputed_amount, "
            "difference_cents, causes FROM usage_invoice_audit",
        )

    month.simulate(
        database_url=embedded_services["DATABASE_URL"],
        clickhouse_url=embedded_services["CLICKHOUSE_URL"],
        tenant_count=TENANTS,
        seed=SEED,
        start=START,
        echo=lambda _: None,
        usage_scale=1.0,  # some tenants above their included queries: overage is billed
        on_done=capture,
        webhook_chaos=Chaos(duplicate_rate=0.3, max_delay_seconds=0.3),
        hooks=injector.hooks(days_in_period + 10),
    )
    audit = seen["audit"]
    print(
        f"chaos month: plan {dict(Counter(plan.values()))}, applied {dict(injector.applied)}, "
        f"Stripe faults injected {dict(seen['injected'])} in "
        f"{injector.bad_day_requests} requests on bad days, crashed pushes "
        f"{injector.crashed_runs}, late queries {injector.late_queries}, "
        f"re-runs {len(injector.reruns_ok)}, queue {seen['queue']}, audited lines {len(audit)}, "
        f"queries {sum(r['warehouse_queries'] for r in audit)}, "
        f"invoiced cents {sum(r['invoice_amount'] for r in audit)}, "
        f"difference cents {sum(r['difference_cents'] for r in audit)}, "
        f"failed runs {len(seen['result'].failed_runs)}"
    )
    return seen


def test_every_kind_of_fault_was_injected(chaos_month: dict[str, Any]) -> None:
    applied = chaos_month["injector"].applied
    assert set(applied) == set(FAULTS) - {"none"}, applied
    assert chaos_month["injector"].crashed_runs == applied["crash_in_push"]
    # The bad days really were bad: Stripe refused or lost answers of each kind.
    assert set(chaos_month["injected"]) == {"throttle", "before", "after"}


def test_zero_cents_between_warehouse_truth_and_stripe_invoices(
    chaos_month: dict[str, Any],
) -> None:
    audit = chaos_month["audit"]
    # The three paying stories (good, fails_later, recovers) have a closed, metered period;
    # trials end after it.
    assert len({row["tenant_id"] for row in audit}) >= 3, audit
    assert chaos_month["result"].failed_runs == [], chaos_month["result"].failed_runs
    assert chaos_month["result"].checks["usage_matches_invoices"] is True
    for row in audit:
        assert row["invoice_quantity"] == row["warehouse_queries"], row
        assert row["invoice_amount"] == row["recomputed_amount"], row
        assert row["difference_cents"] == 0, row
    # Not a trivial zero: the period billed overage above the included queries.
    assert sum(row["invoice_amount"] for row in audit) > 0, audit
    # The late events that arrived before a crashed push are part of what was invoiced.
    assert chaos_month["injector"].late_queries > 0
    assert sum(row["warehouse_queries"] for row in audit) > 0


def test_nothing_lost_every_rerun_converged(chaos_month: dict[str, Any]) -> None:
    assert all(chaos_month["injector"].reruns_ok), chaos_month["injector"].reruns_ok
    queue = chaos_month["queue"]
    assert queue.get("pending", 0) == queue.get("failed", 0) == queue.get("dead", 0) == 0, queue
    assert queue.get("processed", 0) > 0
