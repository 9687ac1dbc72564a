"""The usage generator spells ids and builds its Arrow batches without a Python object per row."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, timedelta

import numpy as np
import pytest
from billing_sandbox.usage_generator import arrow_batch, hex_ascii, usage_chunks, uuid_text

from billing_pipelines.lib.usage.tables import USAGE_EVENTS_COLUMNS

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize("width", [1, 12, 16])
def test_hex_digits_are_what_bytes_hex_spells(width: int) -> None:
    rng = np.random.default_rng(width)
    raw = rng.integers(0, 256, size=(50, width), dtype=np.uint8)
    raw[0, :] = 0  # the extremes: every digit 0 and every digit f
    raw[1, :] = 255
    spelled = [row.tobytes().decode() for row in hex_ascii(raw)]
    assert spelled == [bytes(row).hex() for row in raw]


def test_uuid_text_is_the_canonical_spelling_of_the_same_sixteen_bytes() -> None:
    raw = np.random.default_rng(3).integers(0, 256, size=(40, 16), dtype=np.uint8)
    texts = [value.decode() for value in uuid_text(raw)]
    assert texts == [str(uuid.UUID(bytes=bytes(row))) for row in raw]


def test_generated_event_ids_are_version_4_uuids_and_query_ids_carry_their_kind() -> None:
    chunks = list(usage_chunks(["north"], date(2026, 5, 4), 2, seed=5, events_per_tenant_day=60))
    for _, chunk in chunks:
        for event_id in chunk["event_id"]:
            parsed = uuid.UUID(event_id.decode())
            assert parsed.version == 4 and parsed.variant == uuid.RFC_4122
        for query_id, kind in zip(chunk["query_id"], chunk["event_type"], strict=True):
            text = query_id.decode()
            assert text[:2] == {"query": "q_", "embedding": "e_"}[str(kind)]
            assert len(text) == 26 and int(text[2:], 16) >= 0


def test_an_arrow_batch_holds_every_row_of_its_tenant_days_in_table_order() -> None:
    chunks = [
        chunk
        for _, chunk in usage_chunks(
            ["b-tenant", "a-tenant"], date(2026, 2, 27), 3, seed=9, events_per_tenant_day=40
        )
    ]
    table = arrow_batch(chunks)
    assert table.column_names == list(USAGE_EVENTS_COLUMNS)
    rows = table.to_pylist()
    expected = [
        {
            "event_id": chunk["event_id"][i].decode(),
            "query_id": chunk["query_id"][i].decode(),
            "tenant_id": str(chunk["tenant_id"][i]),
            "timestamp": EPOCH + timedelta(milliseconds=int(chunk["timestamp"][i])),
            "event_type": str(chunk["event_type"][i]),
            "tokens_used": int(chunk["tokens_used"][i]),
            "embeddings_count": int(chunk["embeddings_count"][i]),
            "latency_ms": int(chunk["latency_ms"][i]),
            "ingested_at": EPOCH + timedelta(milliseconds=int(chunk["ingested_at"][i])),
        }
        for chunk in chunks
        for i in range(chunk["timestamp"].size)
    ]
    assert len(rows) == len(expected) > 100
    assert rows == expected
    # Tenants in the order given (not sorted), both kinds present.
    assert rows[0]["tenant_id"] == "b-tenant" and rows[-1]["tenant_id"] == "a-tenant"
    assert {row["event_type"] for row in rows} == {"query", "embedding"}


def test_an_arrow_batch_refuses_an_unknown_event_kind() -> None:
    ((_, chunk),) = usage_chunks(["solo"], date(2026, 1, 5), 1, seed=1, events_per_tenant_day=30)
    chunk["event_type"] = chunk["event_type"].astype("U9")
    chunk["event_type"][0] = "refund"
    with pytest.raises(ValueError, match="event types"):
        arrow_batch([chunk])


def test_drawn_day_by_day_the_tenant_days_are_the_same_in_day_order() -> None:
    tenants = ["zeta", "alpha", "mid"]
    # Across a year end, sizes from a few events a day to hundreds.
    kwargs = {"events_per_tenant_day": {"zeta": 3.0, "alpha": 250.0, "mid": 40.0}}
    start = date(2026, 12, 29)
    by_tenant = list(usage_chunks(tenants, start, 5, seed=4, **kwargs))  # type: ignore[arg-type]
    by_day = list(usage_chunks(tenants, start, 5, seed=4, days_first=True, **kwargs))  # type: ignore[arg-type]

    def key(item: tuple[date, dict[str, np.ndarray]]) -> tuple[date, str]:
        return item[0], str(item[1]["tenant_id"][0])

    # Day by day: days in order, the tenants in the order given within a day.
    assert [key(item) for item in by_day] == sorted(
        (key(item) for item in by_tenant), key=lambda k: (k[0], tenants.index(k[1]))
    )
    drawn = {key(item): item[1] for item in by_tenant}
    for item in by_day:
        expected = drawn[key(item)]
        assert item[1].keys() == expected.keys()
        for name, values in item[1].items():
            assert np.array_equal(values, expected[name]), name
