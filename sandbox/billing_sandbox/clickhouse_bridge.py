"""ClickHouse's HTTP interface over one embedded chDB session, so all processes share the warehouse.

chDB lets a single process open a data path, while Dagster runs steps in separate processes. This
bridge owns the chDB session and answers the subset of ClickHouse's HTTP protocol that
clickhouse-connect uses, so assets, the generator and tests talk to it exactly as to a server.
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
import selectors
import signal
import subprocess
import sys
import threading
import time
import uuid
import zlib
from collections.abc import Callable
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import chdb.session
import lz4.frame

if sys.version_info >= (3, 14):
    from compression import zstd
else:  # clickhouse-connect itself depends on backports.zstd before 3.14
    from backports import zstd

# HTTP parameters ClickHouse treats as transport options rather than query settings.
_TRANSPORT_PARAMS = frozenset(
    {
        "query", "database", "default_format", "session_id", "session_timeout", "session_check",
        "query_id", "quota_key", "compress", "decompress", "buffer_size", "wait_end_of_query",
        "user", "password", "role", "client_protocol_version", "enable_http_compression",
        "send_progress_in_http_headers", "http_headers_progress_interval_ms",
        "cancel_http_readonly_queries_on_client_close",
    }
)  # fmt: skip
_SETTING_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# INSERT ... FORMAT <fmt> followed by raw data: the statement goes to chDB's streaming inserter.
_INSERT_FORMAT = re.compile(
    rb"\A\s*(INSERT\s+INTO\s.*?)\s+FORMAT\s+([A-Za-z0-9_]+)[ \t]*(?:\r?\n)?", re.S | re.I
)
_OUTPUT_FORMAT = re.compile(r"\bFORMAT\s+([A-Za-z0-9_]+)\s*;?\s*\Z", re.I)
_RESULT_STATEMENT = re.compile(
    r"\A\s*\(*\s*(SELECT|WITH|SHOW|DESCRIBE|DESC|EXISTS|EXPLAIN)\b", re.I
)
_ERROR_CODE = re.compile(r"Code: (\d+)\.")
# ClickHouse's HTTP status for common exception codes; everything else is a 500.
_HTTP_STATUS = {60: 404, 81: 404, 46: 404, 47: 404, 50: 404, 62: 400, 36: 400, 456: 400, 457: 400}
_ENCODERS: dict[str, Callable[[bytes], bytes]] = {
    "lz4": lz4.frame.compress,
    "zstd": zstd.compress,
    "gzip": gzip.compress,
    "deflate": zlib.compress,
}


def _lz4_frames(data: bytes) -> bytes:
    """Decode concatenated LZ4 frames (clickhouse-connect compresses each insert block alone)."""
    out: list[bytes] = []
    while data:
        decoder = lz4.frame.LZ4FrameDecompressor()
        out.append(decoder.decompress(data))
        if not decoder.eof:
            raise ValueError("truncated LZ4 frame in request body")
        data = decoder.unused_data
    return b"".join(out)


_DECODERS: dict[str, Callable[[bytes], bytes]] = {
    "lz4": _lz4_frames,
    "zstd": zstd.decompress,
    "gzip": gzip.decompress,
    "deflate": zlib.decompress,
}
READY_LINE = "clickhouse bridge listening on"


class BridgeError(Exception):
    """A ClickHouse-style failure answered to the client with its error code."""

    def __init__(self, message: str, code: int = 1001) -> None:
        super().__init__(message)
        self.code = code


def _quote_string(value: str) -> str:
    """Quote a value as a ClickHouse string literal (backslash escaping, as ClickHouse does)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


class Engine:
    """The one chDB session, with per-request database and settings applied under a lock."""

    def __init__(self, data_path: Path) -> None:
        data_path.mkdir(parents=True, exist_ok=True)
        # UTC like our production servers, whatever the developer's machine is set to: billing
        # days are UTC days, and the client adopts the server's timezone() for naive values.
        self.session = chdb.session.Session(f"{data_path}?session_timezone=UTC")
        # A streaming insert blocks the connection and SET/USE are session-wide: serialize all.
        self.lock = threading.Lock()
        self.version, self.timezone = self._run("SELECT version(), timezone()")[0].decode().split()
        self._database = "default"
        self._baseline: dict[str, str] = {}

    def _run(
        self, sql: str, fmt: str = "TabSeparated", params: dict[str, str] | None = None
    ) -> Any:
        try:
            result = self.session.query(sql, fmt, params=params)
        except Exception as ex:  # chDB raises ChdbError/RuntimeError carrying ClickHouse's text
            raise _as_bridge_error(ex) from None
        return result.bytes(), result

    def _baseline_value(self, name: str) -> str:
        if name not in self._baseline:
            body, _ = self._run(
                "SELECT value FROM system.settings WHERE name = {n:String}", params={"n": name}
            )
            if not body:
                raise BridgeError(f"Code: 115. DB::Exception: Unknown setting '{name}'.", 115)
            self._baseline[name] = body.decode().rstrip("\n")
        return self._baseline[name]

    def execute(
        self, raw: bytes, params: dict[str, str], settings: dict[str, str], database: str | None
    ) -> tuple[bytes, dict[str, int]]:
        """Run one request's statement (and insert data), returning the body and row counts."""
        with self.lock:
            target = database or "default"
            if target != self._database:
                self._run("USE `" + target.replace("\\", "\\\\").replace("`", "\\`") + "`")
                self._database = target
            for name in settings:
                if not _SETTING_NAME.match(name):
                    raise BridgeError(f"Code: 115. DB::Exception: Bad setting '{name}'.", 115)
            changed = {k: v for k, v in settings.items() if v != self._baseline_value(k)}
            try:
                if changed:
                    self._run(
                        "SET " + ", ".join(f"{k} = {_quote_string(v)}" for k, v in changed.items())
                    )
                return self._statement(raw, params)
            finally:
                # Settings are per request in ClickHouse's HTTP interface: put the session back.
                if changed:
                    self._run(
                        "SET "
                        + ", ".join(f"{k} = {_quote_string(self._baseline[k])}" for k in changed)
                    )

    def _statement(self, raw: bytes, params: dict[str, str]) -> tuple[bytes, dict[str, int]]:
        match = _INSERT_FORMAT.match(raw[: 1 << 16])
        if match and not re.search(rb"\b(VALUES|SELECT)\b|'", match.group(1), re.I):
            statement, fmt = match.group(1).decode(), match.group(2).decode()
            try:
                inserter = self.session.send_insert(statement, fmt)
                try:
                    if len(raw) > match.end():
                        inserter.append(raw[match.end() :])
                    done = inserter.finish()
                finally:
                    inserter.cancel()  # no-op after finish; frees the connection on failure
            except Exception as ex:
                raise _as_bridge_error(ex) from None
            return b"", {"written_rows": done.rows_written, "written_bytes": done.bytes_written}
        body, result = self._run(raw.decode("utf-8"), params=params)
        return body, {
            "read_rows": result.rows_read(),
            "read_bytes": result.bytes_read(),
            "written_rows": result.rows_written(),
            "written_bytes": result.bytes_written(),
            "result_rows": 0,
        }

    def close(self) -> None:
        self.session.close()


def _as_bridge_error(ex: Exception) -> BridgeError:
    """Keep ClickHouse's own message and code from a chDB exception."""
    text = str(ex)
    start = text.find("Code: ")
    message = text[start:] if start >= 0 else f"Code: 1001. DB::Exception: {text}"
    code = _ERROR_CODE.search(message)
    return BridgeError(message, int(code.group(1)) if code else 1001)


def _read_body(handler: BaseHTTPRequestHandler) -> bytes:
    """Read a Content-Length or chunked body (clickhouse-connect streams inserts chunked)."""
    if "chunked" in handler.headers.get("Transfer-Encoding", "").lower():
        chunks: list[bytes] = []
        while True:
            size = int(handler.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while handler.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return b"".join(chunks)
            chunks.append(handler.rfile.read(size))
            handler.rfile.readline()
    return handler.rfile.read(int(handler.headers.get("Content-Length") or 0))


def _form_fields(content_type: str, body: bytes) -> dict[str, str]:
    """Long queries and bound parameters arrive as multipart form fields instead of the URL."""
    message = BytesParser(policy=HTTP).parsebytes(
        b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body
    )
    fields: dict[str, str] = {}
    for part in message.walk():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        if isinstance(name, str) and isinstance(payload, bytes):
            fields[name] = payload.decode()
    return fields


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as urllib3's pool expects
    # A reply goes out as two writes (headers, then body). With Nagle's algorithm on, the body
    # waits for the client to acknowledge the headers, and the client delays that ACK by up to
    # 40 ms: every query would pay it.
    disable_nagle_algorithm = True
    server: BridgeServer

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the URL holds query text and parameters: keep them out of logs

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        if path in ("/ping", "/") and "query=" not in self.path:
            self._reply(200, b"Ok.\n", {"Content-Type": "text/plain; charset=UTF-8"})
        else:
            self._handle(b"")

    def do_POST(self) -> None:
        self._handle(_read_body(self))

    def _handle(self, body: bytes) -> None:
        query_id = ""
        try:
            params = dict(parse_qsl(urlsplit(self.path).query, keep_blank_values=True))
            query_id = params.get("query_id") or str(uuid.uuid4())
            encoding = self.headers.get("Content-Encoding", "").strip().lower()
            if encoding and encoding != "identity":
                if encoding not in _DECODERS:
                    raise BridgeError(f"Code: 1001. DB::Exception: Unsupported encoding {encoding}")
                body = _DECODERS[encoding](body)
            content_type = self.headers.get("Content-Type", "")
            if content_type.startswith("multipart/form-data"):
                params.update(_form_fields(content_type, body))
                body = b""
            if params.get("compress") == "1" or params.get("decompress") == "1":
                raise BridgeError("Code: 1001. DB::Exception: compress/decompress=1 unsupported")
            query = params.get("query", "")
            raw = (query.encode() + (b"\n" if query and body else b"")) + body
            if not raw.strip():
                raise BridgeError("Code: 62. DB::Exception: Empty query. (SYNTAX_ERROR)", 62)
            bound = {k[6:]: v for k, v in params.items() if k.startswith("param_")}
            settings = {
                k: v for k, v in params.items()
                if k not in _TRANSPORT_PARAMS and not k.startswith("param_")
            }  # fmt: skip
            database = params.get("database") or self.headers.get("X-ClickHouse-Database")
            result, counts = self.server.engine.execute(raw, bound, settings, database)
        except Exception as ex:  # every failure goes back as a ClickHouse error, never a reset
            if not isinstance(ex, BridgeError):
                ex = BridgeError(f"Code: 1001. DB::Exception: {type(ex).__name__}: {ex}")
            message = str(ex).rstrip() + f" (version {self.server.engine.version})\n"
            self._reply(
                _HTTP_STATUS.get(ex.code, 500),
                message.encode(),
                {
                    "Content-Type": "text/plain; charset=UTF-8",
                    "X-ClickHouse-Exception-Code": str(ex.code),
                    "X-ClickHouse-Query-Id": query_id,
                },
            )
            return
        headers = {
            "Content-Type": "application/octet-stream",
            "X-ClickHouse-Query-Id": query_id,
            "X-ClickHouse-Timezone": self.server.engine.timezone,
            "X-ClickHouse-Summary": json.dumps({k: str(v) for k, v in counts.items()}),
        }
        sql = raw[: 1 << 16].decode("utf-8", "replace")
        if _RESULT_STATEMENT.match(sql):
            # The client tells "empty result" from "no result" by this header.
            fmt = _OUTPUT_FORMAT.search(sql)
            headers["X-ClickHouse-Format"] = fmt.group(1) if fmt else "TabSeparated"
        # The engine reports enable_http_compression=1: honour Accept-Encoding unless told not to.
        if result and params.get("enable_http_compression", "1") != "0":
            for accepted in self.headers.get("Accept-Encoding", "").split(","):
                coding = accepted.split(";")[0].strip().lower()
                if coding in _ENCODERS:
                    result = _ENCODERS[coding](result)
                    headers["Content-Encoding"] = coding
                    break
        self._reply(200, result, headers)

    def _reply(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class BridgeServer(ThreadingHTTPServer):
    """A threading HTTP server that owns the chDB engine for its data path."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], engine: Engine) -> None:
        self.engine = engine
        super().__init__(address, _Handler)

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def server_close(self) -> None:
        super().server_close()
        self.engine.close()


def make_server(data_path: Path, host: str = "127.0.0.1", port: int = 0) -> BridgeServer:
    """Open chDB on data_path and bind the HTTP server (port 0 picks a free port)."""
    return BridgeServer((host, port), Engine(Path(data_path)))


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def serve(data_path: Path, host: str, port: int) -> None:
    """Serve ClickHouse's HTTP interface for data_path until interrupted (the CLI entry point)."""
    server = make_server(data_path, host, port)
    if threading.current_thread() is threading.main_thread():
        # `billing sandbox down` sends SIGTERM: close chDB cleanly rather than die mid-write.
        signal.signal(signal.SIGTERM, _interrupt)
    print(f"{READY_LINE} http://{host}:{server.port} (chDB at {data_path})", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def spawn_bridge(
    data_path: Path, host: str = "127.0.0.1", port: int = 0, timeout: float = 60.0
) -> tuple[subprocess.Popen[bytes], int]:
    """Start the bridge in a child process and return it with its port once it is listening."""
    cmd = [sys.executable, "-m", __name__, "--data-path", str(data_path), "--host", host]
    proc = subprocess.Popen([*cmd, "--port", str(port)], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    # A selector, not select.select(): a long test session can hold more than 1,024 file
    # descriptors, which select() cannot watch.
    with selectors.DefaultSelector() as ready:
        ready.register(proc.stdout, selectors.EVENT_READ)
        while time.monotonic() < deadline and proc.poll() is None:
            if ready.select(0.2):
                line = proc.stdout.readline().decode(errors="replace")
                if line.startswith(READY_LINE):
                    return proc, int(line.split()[4].rsplit(":", 1)[1])
    proc.kill()
    raise RuntimeError(f"ClickHouse bridge did not start (exit code {proc.wait()})")


def main(argv: list[str] | None = None) -> None:
    """`python -m billing_sandbox.clickhouse_bridge --data-path DIR [--port N]`."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data-path", type=Path, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8123)
    args = parser.parse_args(argv)
    serve(args.data_path, args.host, args.port)


if __name__ == "__main__":
    main()
