"""The demo and the usage generator write synthetic data: only ever into the embedded services.

Every setting through which they could reach something real (a database, the warehouse,
Dagster's storage, Stripe, a mail relay, an on-call address, a chat channel) must be unset (the
sandbox then supplies it) or hold the value the sandbox itself wrote to `sandbox.env`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from billing_pipelines.lib.errors import BillingConfigError
from billing_sandbox import services

# Settings that must be the sandbox's own (or unset) for synthetic data to be written.
SANDBOX_OWNED = (
    "DATABASE_URL",
    "DAGSTER_POSTGRES_URL",
    "DAGSTER_HOME",
    "CLICKHOUSE_URL",
    "STRIPE_API_KEY",
    "STRIPE_API_BASE",
)
# Settings that reach people or channels: the sandbox has no stand-in for them, so set is wrong
# (a `file://` mail sink excepted: it is a local folder).
MUST_BE_UNSET = ("ALERT_EMAIL", "ALERT_CHAT_WEBHOOK_URL")


def sandbox_written(home: Path) -> dict[str, str]:
    """The addresses `billing sandbox up` wrote under this home (empty before the first up)."""
    path = home / services.ENV_FILE
    if not path.exists():
        return {}
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return {key: value for key, value in pairs if not key.startswith("#")}


def offending_settings(environ: Mapping[str, str], home: Path) -> list[str]:
    """The outbound settings that point somewhere other than the embedded services."""
    written = sandbox_written(home)
    upper = {key.upper(): value for key, value in environ.items() if value.strip()}
    offending = []
    for name in SANDBOX_OWNED:
        value = upper.get(name)
        if value is None or value == written.get(name):
            continue
        if name == "STRIPE_API_KEY" and value == services.SANDBOX_STRIPE_KEY:
            continue
        if name == "DAGSTER_HOME" and Path(value).resolve() == (home / "dagster").resolve():
            continue
        offending.append(name)
    smtp = upper.get("SMTP_URL")
    if smtp is not None and not smtp.startswith("file:"):
        offending.append("SMTP_URL")
    offending += [name for name in MUST_BE_UNSET if name in upper]
    return offending


def require_embedded(label: str, home: Path, environ: Mapping[str, str] | None = None) -> None:
    """One line naming every outbound setting that is not the sandbox's: nothing is written."""
    offending = offending_settings(os.environ if environ is None else environ, home)
    if offending:
        raise BillingConfigError(
            f"`{label}` writes synthetic data and runs only on the embedded services, but "
            f"{', '.join(offending)} {'is' if len(offending) == 1 else 'are'} set to something "
            f"else: unset {'it' if len(offending) == 1 else 'them'} (or point "
            f"{'it' if len(offending) == 1 else 'them'} at the sandbox)"
        )
