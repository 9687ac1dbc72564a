"""A chat alert whose delivering process dies on every try ends `dead`, and says so.

Before, the delivery was taken over after each lease and re-claimed forever. The real
billing database; the chat post is where the process dies (a BaseException, as a kill would).
"""

from __future__ import annotations

import pytest

from billing_pipelines.lib.alerts import channels as alerting
from billing_pipelines.lib.pg import database
from billing_pipelines_tests.support import SimulatedCrash
from billing_pipelines_tests.webhook_harness import query

URL = "http://chat.invalid/hooks/secret-token"


def _let_time_pass(url: str, seconds: float) -> None:
    query(
        url,
        "UPDATE alert_deliveries SET claimed_at = claimed_at - make_interval(secs => %(s)s), "
        "dispatched_at = dispatched_at - make_interval(secs => %(s)s) RETURNING id",
        {"s": seconds},
    )


def test_a_delivery_whose_tick_always_dies_is_dead_lettered_with_an_alert_row(
    billing_db_url: str,
) -> None:
    failure = alerting.run_failure(run_id="r9", job_name="job", error="boom", ui_url=None)
    pool = database.open_pool(billing_db_url)
    tries = 0

    def dies(_url: str, _body: object) -> None:
        nonlocal tries
        tries += 1
        raise SimulatedCrash

    def tick() -> dict[str, int]:
        return alerting.deliver_chat(lambda: database.transaction(pool), URL, post=dies)

    try:
        with database.transaction(pool) as conn:
            assert alerting.raise_failure(
                conn, failure, alerting.AlertChannel(chat_webhook_url=URL)
            )
        for attempt in range(1, alerting.MAX_CHAT_ATTEMPTS + 1):
            with pytest.raises(SimulatedCrash):
                tick()
            (row,) = query(billing_db_url, "SELECT status, attempts FROM alert_deliveries")
            assert (row["status"], row["attempts"]) == ("sending", attempt)
            _let_time_pass(billing_db_url, alerting.CHAT_POLICY.lease_seconds + 1)
        # The claim after the last attempt buries it instead of posting again.
        assert tick() == {"sent": 0, "failed": 0, "dead": 1}
        _let_time_pass(billing_db_url, 86400)
        assert tick() == {"sent": 0, "failed": 0, "dead": 0}
    finally:
        pool.close()
    assert tries == alerting.MAX_CHAT_ATTEMPTS
    (row,) = query(billing_db_url, "SELECT status, attempts, last_error FROM alert_deliveries")
    assert (row["status"], row["attempts"]) == ("dead", alerting.MAX_CHAT_ATTEMPTS)
    assert row["last_error"].startswith("attempts used up")
    kinds = [r["kind"] for r in query(billing_db_url, "SELECT kind FROM alerts ORDER BY id")]
    assert kinds == ["run_failed", "chat_dead_letter"]
