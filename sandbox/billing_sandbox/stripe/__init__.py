"""A stateful, wire-compatible emulator of the Stripe API for the stripe SDK's pinned version.

Public API: `create_app`, `serve`, `run_in_thread`, `SandboxState`, `Settings`, `Chaos`.
Standalone: imports nothing from billing code.
"""

from .app import create_app
from .server import SandboxHandle, run_in_thread, serve
from .store import FaultRates, SandboxState, Settings
from .webhooks import Chaos

__all__ = [
    "Chaos",
    "FaultRates",
    "SandboxHandle",
    "SandboxState",
    "Settings",
    "create_app",
    "run_in_thread",
    "serve",
]
