"""The SDK's request log lines, formatted only when a handler or the console will show them.

The SDK formats two or three logfmt lines for every request (`Request to Stripe api`, `Stripe API
response`, the body at debug level) before asking whether anyone logs them: regular-expression
escaping of every value, about a tenth of the client's CPU per meter event at 1,000 events/s,
for lines that the `stripe` logger at its default level (WARNING) throws away. Installed once per
process by `make_client`; a process that sets the `stripe` logger to INFO or DEBUG, or the SDK's
own `stripe.log` / `STRIPE_LOG`, still gets every line exactly as the SDK writes it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

_installed = False
_lock = threading.Lock()

LogLine = Callable[..., None]


def _when_shown(original: LogLine, level: int) -> LogLine:
    """`original`, called only if its line can reach the console or a `stripe` log handler."""
    from stripe import _util

    def log(message: str, **params: Any) -> None:
        if _util._console_log_level() is None and not _util.logger.isEnabledFor(level):
            return
        original(message, **params)

    return log


def format_sdk_log_lines_only_when_shown() -> None:
    """Make the SDK's per-request log lines lazy (idempotent; the SDK's behaviour otherwise)."""
    global _installed
    with _lock:
        if _installed:
            return
        from stripe import _api_requestor, _util

        # Only the names the requestor calls per request, and only if they are still the SDK's
        # own functions (an SDK that renamed them keeps its behaviour and its cost).
        if _api_requestor.log_info is _util.log_info:
            _api_requestor.log_info = _when_shown(_util.log_info, logging.INFO)
        if _api_requestor.log_debug is _util.log_debug:
            _api_requestor.log_debug = _when_shown(_util.log_debug, logging.DEBUG)
        _installed = True
