"""The chDB bridge answers clickhouse-connect as a ClickHouse server would, for many processes."""

from __future__ import annotations

import http.client
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime
from decimal import Decimal
from multiprocessing import get_context
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import clickhouse_connect
import pytest
from backports import zstd
from billing_sandbox.clickhouse_bridge import spawn_bridge
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import DatabaseError

from billing_pipelines.lib.usage.warehouse import connect


@pytest.fixture(scope="module")
def bridge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    """One bridge process on a free port over a fresh chDB folder: (port, data path)."""
    data = tmp_path_factory.mktemp("chdb") / "data"
    proc, port = spawn_bridge(data)
    try:
        yield port, data
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def client_for(port: int, **kwargs: Any) -> Client:
    """A client with a username and password, as production passes them."""
    return clickhouse_connect.get_client(
        host="127.0.0.1", port=port, username="default", password="not-checked", **kwargs
    )


def fresh_database(client: Client) -> str:
    """A private database so tests sharing the bridge never see each other's tables."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    client.command(f"CREATE DATABASE {name}")
    return name


TYPED_DDL = """
CREATE TABLE typed (
    id UInt32,
    tenant_id LowCardinality(String),
    event_id UUID,
    at DateTime64(3, 'UTC'),
    note Nullable(String),
    amount Decimal(18, 6),
    tags Array(String)
) ENGINE = MergeTree ORDER BY id
"""
TYPED_COLUMNS = ["id", "tenant_id", "event_id", "at", "note", "amount", "tags"]
TYPED_ROWS = [
    (1, "acme", uuid.UUID(int=1), datetime(2025, 11, 1, 0, 0, 0, 1000, tzinfo=UTC), None,
     Decimal("0.001000"), []),
    (2, "it's \\ tab\t", uuid.uuid4(), datetime(2025, 11, 30, 23, 59, 59, 999000, tzinfo=UTC),
     "naïve ✓", Decimal("499.000000"), ["a", "b'c"]),
    (3, "acme", uuid.uuid4(), datetime(2024, 2, 29, 12, 0, tzinfo=UTC), "", Decimal("-1.5"),
     ["x"]),
]  # fmt: skip


def normalised(rows: Sequence[Sequence[Any]]) -> list[tuple[Any, ...]]:
    """Rows with DateTime64 values as aware UTC datetimes (the client reads UTC as naive)."""
    return [
        tuple(v.replace(tzinfo=UTC) if isinstance(v, datetime) else v for v in row) for row in rows
    ]


def test_production_client_builder_connects(bridge: tuple[int, Path]) -> None:
    port, _ = bridge
    client = connect(f"http://default:s3cret@127.0.0.1:{port}/default")
    assert client.ping()
    assert (client.server_version or "").split(".")[0].isdigit()
    assert client.command("SELECT 1") == 1
    assert client.query("SELECT timezone()").result_rows == [("UTC",)]


@pytest.mark.parametrize("compress", [True, False, "lz4", "zstd", "gzip"])
def test_typed_round_trip_for_each_compression(bridge: tuple[int, Path], compress: Any) -> None:
    port, _ = bridge
    client = client_for(port, compress=compress)
    client = client_for(port, compress=compress, database=fresh_database(client))
    client.command(TYPED_DDL)
    summary = client.insert("typed", TYPED_ROWS, column_names=TYPED_COLUMNS)
    assert summary.written_rows == 3
    rows = client.query(f"SELECT {', '.join(TYPED_COLUMNS)} FROM typed ORDER BY id").result_rows
    assert normalised(rows) == TYPED_ROWS
    # A result larger than one Native block, so compression spans several blocks.
    big = client.query("SELECT number, toString(number) FROM numbers(200000)").result_rows
    assert len(big) == 200000 and big[-1] == (199999, "199999")


def test_large_multi_block_insert_keeps_every_row(bridge: tuple[int, Path]) -> None:
    port, _ = bridge
    client = client_for(port)  # default compress=True: one LZ4 frame per insert block
    client = client_for(port, database=fresh_database(client))
    client.command("CREATE TABLE big (n UInt64, s String) ENGINE = MergeTree ORDER BY n")
    n = 300_000
    client.insert("big", [list(range(n)), [str(i) for i in range(n)]], ["n", "s"],
                  column_oriented=True)  # fmt: skip
    assert client.query("SELECT count(), sum(n), uniqExact(s) FROM big").result_rows == [
        (n, n * (n - 1) // 2, n)
    ]


def test_insert_df_and_query_df(bridge: tuple[int, Path]) -> None:
    port, _ = bridge
    client = client_for(port)
    client = client_for(port, database=fresh_database(client))
    client.command(TYPED_DDL)
    client.insert("typed", TYPED_ROWS, column_names=TYPED_COLUMNS)
    df = client.query_df("SELECT id, tenant_id, at, note FROM typed ORDER BY id")
    assert df["id"].tolist() == [1, 2, 3]
    assert df["tenant_id"].tolist() == ["acme", "it's \\ tab\t", "acme"]
    assert df["at"].iloc[1] == datetime(2025, 11, 30, 23, 59, 59, 999000)
    assert df["note"].isna().tolist() == [True, False, False]
    client.command(
        "CREATE TABLE copy (id UInt32, tenant_id String, at DateTime64(3, 'UTC'), "
        "note Nullable(String)) ENGINE = MergeTree ORDER BY id"
    )
    assert client.insert_df("copy", df).written_rows == 3
    back = client.query_df("SELECT * FROM copy ORDER BY id")
    assert back.equals(df)


HOSTILE_TENANTS = [
    "acme",
    "x' OR 1=1 --",
    "back\\slash' ; DROP TABLE events; --",
    'quote"double',
    "tab\tnew\nline",
    "{tenant:String}",
    "ünïcødé ✓",
]


def test_bound_parameters_cannot_inject(bridge: tuple[int, Path]) -> None:
    port, _ = bridge
    client = client_for(port)
    client = client_for(port, database=fresh_database(client))
    client.command("CREATE TABLE events (tenant_id String, n UInt32) ENGINE = MergeTree ORDER BY n")
    rows = [(tenant, i) for i, tenant in enumerate(HOSTILE_TENANTS) for _ in range(i + 1)]
    client.insert("events", rows, column_names=["tenant_id", "n"])
    for i, tenant in enumerate(HOSTILE_TENANTS):
        result = client.query(
            "SELECT count(), any(tenant_id) FROM events WHERE tenant_id = {tenant:String}",
            parameters={"tenant": tenant},
        )
        assert result.result_rows == [(i + 1, tenant)]
    # A DateTime64 bound like the billing queries bind day bounds, and an Array parameter.
    assert client.query(
        "SELECT {start:DateTime64(3, 'UTC')}, length({ids:Array(String)})",
        parameters={"start": datetime(2025, 11, 3, tzinfo=UTC), "ids": HOSTILE_TENANTS},
    ).result_rows == [(datetime(2025, 11, 3), len(HOSTILE_TENANTS))]
    # Parameters longer than clickhouse-connect's URL limit travel as multipart form fields.
    long_list = [f"tenant-{i:05d}" for i in range(2000)] + ["x' OR 1=1 --"]
    assert client.query(
        "SELECT count() FROM events WHERE tenant_id IN {ids:Array(String)}",
        parameters={"ids": long_list},
    ).result_rows == [(2,)]
    assert client.command("SELECT count() FROM events") == len(rows)


def test_errors_carry_clickhouse_codes(bridge: tuple[int, Path]) -> None:
    port, _ = bridge
    client = client_for(port)
    with pytest.raises(DatabaseError) as unknown:
        client.query("SELECT * FROM no_such_table")
    assert unknown.value.code == 60
    assert "code: 60" in str(unknown.value) and "UNKNOWN_TABLE" in str(unknown.value)
    with pytest.raises(DatabaseError) as syntax:
        client.command("SELEC 1")
    assert syntax.value.code == 62 and "SYNTAX_ERROR" in str(syntax.value)
    with pytest.raises(DatabaseError) as bad_param:
        client.query("SELECT {n:UInt8}", parameters={"n": "not a number"})
    assert bad_param.value.code == 457
    with pytest.raises(DatabaseError) as missing_insert:
        client.insert("no_such_table", [(1,)], column_names=["a"], column_type_names=["UInt8"])
    assert missing_insert.value.code == 60
    # The same client keeps working after failures.
    assert client.command("SELECT 2") == 2


def test_settings_apply_to_one_request_only(bridge: tuple[int, Path]) -> None:
    port, _ = bridge
    client = client_for(port)
    default = client.command("SELECT getSetting('max_threads')")
    assert client.query(
        "SELECT getSetting('max_threads')", settings={"max_threads": 3}
    ).result_rows == [(3,)]
    assert client.command("SELECT getSetting('max_threads')") == default
    with pytest.raises(DatabaseError) as unknown:
        client.query("SELECT 1", settings={"no_such_setting_xyz": 1})
    assert unknown.value.code == 115


def test_database_parameter_scopes_unqualified_names(bridge: tuple[int, Path]) -> None:
    port, _ = bridge
    base = client_for(port)
    db = fresh_database(base)
    scoped = client_for(port, database=db)
    scoped.command("CREATE TABLE only_here (a UInt8) ENGINE = Memory")
    assert scoped.command("SELECT currentDatabase()") == db
    assert base.command("SELECT currentDatabase()") == "default"
    with pytest.raises(DatabaseError) as missing:
        base.command("SELECT count() FROM only_here")
    assert missing.value.code == 60


def raw_post(port: int, params: dict[str, str], body: bytes, headers: dict[str, str]) -> Any:
    """One HTTP request without clickhouse-connect, to see the exact headers the bridge sends."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("POST", "/?" + urlencode(params), body=body, headers=headers)
    response = conn.getresponse()
    return response.status, dict(response.getheaders()), response.read()


def test_http_protocol_details(bridge: tuple[int, Path]) -> None:
    port, _ = bridge
    query = b"SELECT number FROM numbers(1000) FORMAT TabSeparated"
    expected = "".join(f"{i}\n" for i in range(1000)).encode()
    status, headers, body = raw_post(port, {}, query, {"Accept-Encoding": "zstd, gzip"})
    assert status == 200 and headers["Content-Encoding"] == "zstd"
    assert zstd.decompress(body) == expected
    status, headers, body = raw_post(
        port, {"enable_http_compression": "0"}, query, {"Accept-Encoding": "gzip"}
    )
    assert "Content-Encoding" not in headers and body == expected
    status, headers, body = raw_post(port, {"query": "SELECT nothing_here"}, b"", {})
    assert status == 404  # ClickHouse answers UNKNOWN_IDENTIFIER with 404
    assert headers["X-ClickHouse-Exception-Code"] == "47"
    assert body.startswith(b"Code: 47. DB::Exception:")
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", "/ping")
    assert conn.getresponse().read() == b"Ok.\n"
    conn.request("GET", "/?" + urlencode({"query": "SELECT {n:UInt8} + 1", "param_n": "41"}))
    assert conn.getresponse().read() == b"42\n"  # same keep-alive connection, TabSeparated


def _worker(port: int, database: str, worker: int, batches: int) -> int:
    """Runs in its own OS process: insert and query through the bridge in turns."""
    client = client_for(port, database=database)
    for batch in range(batches):
        rows = [(worker, batch, i) for i in range(1000)]
        client.insert("shared", rows, column_names=["worker", "batch", "i"])
        seen = client.command("SELECT count() FROM shared WHERE worker = {w:UInt8}",
                              parameters={"w": worker})  # fmt: skip
        assert seen == (batch + 1) * 1000
    return worker


def test_separate_processes_share_the_warehouse(bridge: tuple[int, Path]) -> None:
    port, data = bridge
    client = client_for(port)
    db = fresh_database(client)
    client.command(
        f"CREATE TABLE {db}.shared (worker UInt8, batch UInt16, i UInt32) "
        "ENGINE = MergeTree ORDER BY (worker, batch, i)"
    )
    with ProcessPoolExecutor(max_workers=3, mp_context=get_context("spawn")) as pool:
        done = list(pool.map(_worker, [port] * 3, [db] * 3, [1, 2, 3], [8] * 3))
    assert done == [1, 2, 3]
    assert client.query(f"SELECT worker, count() FROM {db}.shared GROUP BY worker ORDER BY worker"
                        ).result_rows == [(1, 8000), (2, 8000), (3, 8000)]  # fmt: skip
    # Why the bridge exists: a second process cannot open the same chDB folder itself.
    direct = subprocess.run(
        [sys.executable, "-c", f"import chdb.session as s; s.Session({str(data)!r})"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert direct.returncode != 0 and "EmbeddedServer" in direct.stderr


def test_make_server_runs_in_a_thread(tmp_path: Path) -> None:
    # chDB allows one data path per process, so this runs in a fresh interpreter. It also
    # records whether each accepted connection sends without Nagle's delay: a reply is written
    # as headers, then body, and with Nagle on the body waits up to 40 ms for the client's ACK.
    script = textwrap.dedent(
        f"""
        import socket
        import threading
        from pathlib import Path
        import clickhouse_connect
        from billing_sandbox.clickhouse_bridge import make_server

        server = make_server(Path({str(tmp_path / "data")!r}))
        handler = server.RequestHandlerClass
        original_setup = handler.setup
        nodelay = []

        def setup(self):
            original_setup(self)
            nodelay.append(self.connection.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))

        handler.setup = setup
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        client = clickhouse_connect.get_client(host="127.0.0.1", port=server.server_address[1])
        assert client.command("SELECT 40 + 2") == 42
        server.shutdown()
        thread.join(10)
        server.server_close()
        print("ok", not thread.is_alive(), "nodelay", bool(nodelay) and all(nodelay))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "ok True nodelay True" in result.stdout
