"""Run the sandbox: `serve()` for the CLI, `run_in_thread()` for tests and the demo."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

import uvicorn
from starlette.applications import Starlette

from ..ports import free_port
from .app import create_app
from .store import SandboxState


def serve(host: str = "127.0.0.1", port: int = 12111, **opts: Any) -> None:
    """Serve the sandbox in the foreground (`billing sandbox stripe`). `opts` go to create_app."""
    app = create_app(**opts)
    # No access log: at the warning level it would never show, and it is asked for per request.
    # uvicorn's "auto" picks httptools and uvloop (both installed with the sandbox).
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)


@dataclass
class SandboxHandle:
    url: str
    state: SandboxState
    server: uvicorn.Server
    thread: threading.Thread
    app: Starlette

    @property
    def requests(self) -> int:
        """Every API request received so far."""
        return int(sum(self.app.state.requests.values()))

    @property
    def throttled(self) -> int:
        """Requests answered 429 by the rate limiter so far (injected throttles not included)."""
        return int(sum(self.app.state.throttled.values()))

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        if self.state.webhooks is not None:
            self.state.webhooks.stop()
            self.state.webhooks = None

    def advance_clock(self, clock_id: str, frozen_time: int, timeout: float = 10.0) -> None:
        """Advance a test clock in-process and wait until it is `ready` again."""
        from .resources.test_clocks import advance_and_wait

        advance_and_wait(self.state, clock_id, frozen_time, timeout)


def run_in_thread(port: int = 0, host: str = "127.0.0.1", **opts: Any) -> SandboxHandle:
    """Start the sandbox on a background thread; the handle has `.url`, `.state`, `.stop()`."""
    state = opts.pop("state", None) or SandboxState(seed=opts.get("seed", 0))
    app = create_app(state, **opts)
    port = port or free_port(host)
    config = uvicorn.Config(
        app, host=host, port=port, log_level="warning", lifespan="off", access_log=False
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="stripe-sandbox", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("stripe sandbox did not start")
        time.sleep(0.01)
    return SandboxHandle(f"http://{host}:{port}", state, server, thread, app)
