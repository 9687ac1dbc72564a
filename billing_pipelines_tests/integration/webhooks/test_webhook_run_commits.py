"""A webhook run commits once per row: the next row's claim rides on this row's outcome."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

import psycopg

from billing_pipelines.definitions import defs
from billing_pipelines.defs.resources import BillingDatabase, StripeResource
from billing_pipelines_tests.support import API_KEY
from billing_pipelines_tests.webhook_harness import Harness, query


class CountingDatabase(BillingDatabase):
    """The billing database resource, counting the transactions a run opens (a spy)."""

    opened: ClassVar[list[str]] = []

    @contextmanager
    def transaction(self) -> Iterator[psycopg.Connection[Any]]:
        CountingDatabase.opened.append("tx")
        with super().transaction() as conn:
            yield conn


def _queue(url: str, event_id: str, event_type: str, obj: dict[str, Any]) -> int:
    body = {"id": event_id, "object": "event", "type": event_type, "data": {"object": obj}}
    [row] = query(
        url,
        "INSERT INTO webhook_events (event_id, event_type, payload) VALUES (%s, %s, %s::jsonb) "
        "RETURNING id",
        (event_id, event_type, json.dumps(body)),
    )
    return int(row["id"])


def test_a_run_of_n_rows_commits_n_plus_one_transactions_and_a_failing_row_fails_alone(
    harness: Harness,
) -> None:
    h = harness
    customer, subscription, _ = h.tenant("commits_a")
    h.drain()
    query(h.db_url, "DELETE FROM webhook_events")  # only this test's rows below
    rows = [
        _queue(
            h.db_url,
            "evt_commit_1",
            "customer.subscription.updated",
            {"id": subscription.id, "customer": customer.id},
        ),
        _queue(h.db_url, "evt_commit_2", "product.created", {"id": "prod_x"}),
        # Names the tenant's customer but no invoice: its handler raises, the row fails alone.
        _queue(h.db_url, "evt_commit_3", "invoice.paid", {"customer": customer.id}),
        _queue(
            h.db_url,
            "evt_commit_4",
            "customer.subscription.updated",
            {"id": subscription.id, "customer": customer.id},
        ),
        _queue(h.db_url, "evt_commit_5", "plan.created", {"id": "plan_x"}),
    ]
    CountingDatabase.opened.clear()
    job = defs().resolve_job_def("webhook_events_job")
    result = job.execute_in_process(
        run_config={"ops": {"process_webhook_events": {"config": {"row_ids": rows}}}},
        resources={
            "billing_db": CountingDatabase(url=h.db_url),
            "stripe": StripeResource(
                api_key=API_KEY, api_base=h.sandbox.url, max_network_retries=0
            ),
        },
        instance=h.instance,
    )
    assert result.success
    assert result.output_for_node("process_webhook_events") == {
        "processed": 2,
        "ignored": 2,
        "failed": 1,
        "dead": 0,
        "not_claimed": 0,
    }
    # The first claim, then one transaction per row; the failing row's handling is rolled
    # back and its failure (with the next row's claim) recorded in one more. Claiming and
    # recording in separate transactions would take 2 x 5 + 1.
    assert len(CountingDatabase.opened) == 1 + len(rows) + 1
    states = query(
        h.db_url,
        "SELECT event_id, status, attempts, claimed_by FROM webhook_events ORDER BY id",
    )
    assert [(r["event_id"], r["status"], r["attempts"]) for r in states] == [
        ("evt_commit_1", "processed", 1),
        ("evt_commit_2", "ignored", 1),
        ("evt_commit_3", "failed", 1),
        ("evt_commit_4", "processed", 1),
        ("evt_commit_5", "ignored", 1),
    ]
    assert h.tenant_row("commits_a")["subscription_status"] == "active"
