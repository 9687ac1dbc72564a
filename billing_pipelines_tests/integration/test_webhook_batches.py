"""A burst of queued Stripe events becomes few, large webhook runs, each row handed out once."""

from __future__ import annotations

import dagster as dg
import pytest

from billing_pipelines.definitions import defs
from billing_pipelines.defs.resources import BillingDatabase
from billing_pipelines_tests.webhook_harness import billing_db_url, query  # noqa: F401 - fixture


def _queue(url: str, count: int, prefix: str) -> list[int]:
    """`count` due webhook rows; returns their ids."""
    query(
        url,
        "INSERT INTO webhook_events (event_id, event_type, payload) "
        f"SELECT '{prefix}' || g, 'invoice.paid', '{{}}'::jsonb FROM generate_series(1, {count}) g",
    )
    rows = query(url, f"SELECT id FROM webhook_events WHERE event_id LIKE '{prefix}%' ORDER BY id")
    return [int(r["id"]) for r in rows]


def _tick(url: str) -> dg.SensorResult | dg.SkipReason:
    sensor = defs().resolve_sensor_def("webhook_events_sensor")
    with dg.build_sensor_context(
        instance=dg.DagsterInstance.ephemeral(),
        resources={"billing_db": BillingDatabase(url=url)},
    ) as ctx:
        result = sensor(ctx)
    assert isinstance(result, dg.SensorResult | dg.SkipReason), result
    return result


def _batches(result: dg.SensorResult | dg.SkipReason) -> list[list[int]]:
    if isinstance(result, dg.SkipReason):
        return []
    return [
        list(r.run_config["ops"]["process_webhook_events"]["config"]["row_ids"])
        for r in result.run_requests or []
    ]


@pytest.mark.parametrize(
    ("queued", "sizes"),
    [
        (130, [100, 30]),  # a burst: two runs, not six
        (7, [7]),  # a trickle: one run of what is due
        (437, [100, 100, 100, 100]),  # a flood: 400 rows a tick, the rest next tick
    ],
)
def test_a_burst_of_events_is_handed_out_in_runs_of_a_hundred_rows(
    billing_db_url: str,  # noqa: F811 - fixture
    monkeypatch: pytest.MonkeyPatch,
    queued: int,
    sizes: list[int],
) -> None:
    monkeypatch.setenv("STRIPE_API_KEY", "sk_test_ready")
    ids = _queue(billing_db_url, queued, f"evt_burst_{queued}_")
    batches = _batches(_tick(billing_db_url))
    assert [len(b) for b in batches] == sizes
    handed = [row for batch in batches for row in batch]
    # Oldest first, each row in exactly one run.
    assert handed == ids[: sum(sizes)]
    # The next tick hands out only the rows left over, in the same batches.
    rest = [row for batch in _batches(_tick(billing_db_url)) for row in batch]
    assert rest == ids[sum(sizes) :]
