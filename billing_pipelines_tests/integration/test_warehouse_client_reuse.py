"""A thread builds its warehouse client once (building asks the server for its settings)."""

from __future__ import annotations

import threading
from datetime import date
from typing import Any

import clickhouse_connect
import pytest

from billing_pipelines.defs.resources import UsageWarehouse


def test_reads_in_one_thread_share_one_client_and_another_thread_builds_its_own(
    embedded_services: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    built: list[Any] = []
    real = clickhouse_connect.get_client

    def counting(**kwargs: Any) -> Any:
        client = real(**kwargs)
        built.append(client)
        return client

    monkeypatch.setattr(clickhouse_connect, "get_client", counting)
    # A timeout no other test uses: a client another test left in this thread is not this one.
    warehouse = UsageWarehouse(
        url=embedded_services["CLICKHOUSE_URL"], send_receive_timeout_seconds=271
    )
    first = warehouse.client()
    assert warehouse.client() is first
    day = date(2031, 3, 9)  # a day no test writes: no usage
    assert warehouse.daily_usage(day).empty and warehouse.daily_usage(day).empty
    assert first.query("SELECT 40 + 2").result_rows == [(42,)]
    assert len(built) == 1
    # Another timeout is another client.
    other = UsageWarehouse(
        url=embedded_services["CLICKHOUSE_URL"], send_receive_timeout_seconds=272
    )
    assert other.client() is not first
    assert len(built) == 2

    seen: list[Any] = []

    def elsewhere() -> None:
        seen.append(warehouse.client())
        seen.append(warehouse.client())
        seen.append(seen[0].query("SELECT 7").result_rows)

    thread = threading.Thread(target=elsewhere)
    thread.start()
    thread.join(60)
    assert seen[0] is seen[1] and seen[0] is not first
    assert seen[2] == [(7,)]
    assert len(built) == 3
