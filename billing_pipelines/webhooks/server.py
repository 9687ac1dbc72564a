"""How `billing webhooks serve` runs the receiver under uvicorn: bounded heads and concurrency.

uvicorn's default HTTP parser (httptools) buffers request headers without a limit, so one
client could make a worker hold tens of megabytes. The h11 parser stops buffering an incomplete
request head beyond WEBHOOK_MAX_HEADER_BYTES (400); a head that arrived whole in one read is
measured by the app itself (431, see app.py). `limit_concurrency` answers 503 once that many
connections and tasks are in flight, so a flood cannot grow memory without bound.
"""

from __future__ import annotations

from typing import Any

from billing_pipelines.settings import Settings

APP_FACTORY = "billing_pipelines.webhooks.app:app_from_environment"


def uvicorn_options(settings: Settings, *, host: str, port: int, workers: int) -> dict[str, Any]:
    """Keyword arguments for uvicorn.run: the receiver's factory and its listener bounds."""
    return {
        "app": APP_FACTORY,
        "factory": True,
        "host": host,
        "port": port,
        "workers": workers,
        "http": "h11",
        "h11_max_incomplete_event_size": settings.webhook_max_header_bytes,
        "limit_concurrency": settings.webhook_max_concurrency,
        # An idle keep-alive connection is closed after 5 s (uvicorn's default, stated here).
        "timeout_keep_alive": 5,
        "server_header": False,
        "log_level": "info",
        "access_log": False,
    }
