"""The one switch that lets embedded stand-ins replace real services (development only).

Without `BILLING_SANDBOX=1` nothing local stands in for a real service: `sandbox.env` is not
read, no embedded PostgreSQL, chDB bridge or Stripe emulator is started, and emails are not
written to a folder unless `SMTP_URL=file:///path` says so. A missing setting is then an error
naming it. With the switch, a live Stripe key is refused: the sandbox is for test data only.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from urllib.parse import unquote, urlsplit

from billing_pipelines.lib.errors import BillingConfigError

SWITCH = "BILLING_SANDBOX"
_ON = {"1", "true", "yes", "on"}
# Stripe's live-mode secret and restricted keys; test-mode keys start sk_test_ / rk_test_.
LIVE_KEY_PREFIXES = ("sk_live_", "rk_live_")

# What each required setting looks like, for the one error line that names it.
EXAMPLES = {
    "DATABASE_URL": "postgresql://user:password@host:5432/billing",
    "DAGSTER_POSTGRES_URL": "postgresql://user:password@host:5432/dagster",
    "DAGSTER_HOME": "the folder holding dagster.yaml",
    "CLICKHOUSE_URL": "https://user:password@host:8443/db",
    "STRIPE_API_KEY": "sk_live_... or sk_test_...",
}
SMTP_MISSING = (
    "SMTP_URL is not set: customer emails cannot be delivered (they stay unsent and are "
    "retried): set SMTP_URL=smtp://user:password@host:587?starttls=true, or "
    "SMTP_URL=file:///path to write them to a folder"
)


def enabled(environ: Mapping[str, str] | None = None) -> bool:
    """True when the operator asked for the embedded stand-ins (BILLING_SANDBOX=1)."""
    env = os.environ if environ is None else environ
    return env.get(SWITCH, "").strip().lower() in _ON


def enable() -> None:
    """Turn the switch on for this process and its children (`billing sandbox`, `billing demo`)."""
    os.environ[SWITCH] = "1"


def is_live_key(key: str | None) -> bool:
    """True for a Stripe live-mode secret or restricted key."""
    return bool(key) and str(key).strip().startswith(LIVE_KEY_PREFIXES)


def refuse_live_key(environ: Mapping[str, str] | None = None) -> None:
    """The sandbox never runs next to a live Stripe key: one line, and nothing is started."""
    env = os.environ if environ is None else environ
    if is_live_key(_lookup(env, "STRIPE_API_KEY")):
        raise BillingConfigError(
            f"STRIPE_API_KEY is a live key and {SWITCH}=1 is set: the embedded services are for "
            f"development only and never run with a live key; unset {SWITCH} or STRIPE_API_KEY"
        )


def missing(names: Iterable[str], environ: Mapping[str, str] | None = None) -> list[str]:
    """The settings among `names` that are unset or empty."""
    env = os.environ if environ is None else environ
    return [name for name in names if not (_lookup(env, name) or "").strip()]


def require(names: Iterable[str], environ: Mapping[str, str] | None = None) -> None:
    """Outside the sandbox: one error line naming every required setting that is unset."""
    absent = missing(names, environ)
    if not absent:
        return
    described = ", ".join(f"{name} ({EXAMPLES.get(name, 'required')})" for name in absent)
    verb, it = ("is", "it") if len(absent) == 1 else ("are", "them")
    raise BillingConfigError(
        f"{described} {verb} not set: set {it} from your secret store; nothing local stands in "
        f"unless {SWITCH}=1 (embedded services, development only)"
    )


def file_sink(smtp_url: str | None) -> Path | None:
    """The folder an explicit `SMTP_URL=file:///path` names, or None for any other value."""
    if not smtp_url or not smtp_url.startswith("file:"):
        return None
    parts = urlsplit(smtp_url)
    if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
        raise BillingConfigError(
            "SMTP_URL is invalid: a file sink is file:///absolute/folder (a local folder)"
        )
    # A file URL percent-encodes the path (Path.as_uri() writes a space as %20).
    return Path(unquote(parts.path))


def findings(environ: Mapping[str, str] | None = None) -> list[str]:
    """Each misconfiguration of the switch and its stand-ins, one line each (`billing doctor`)."""
    env = os.environ if environ is None else environ
    lines: list[str] = []
    key = _lookup(env, "STRIPE_API_KEY")
    if enabled(env) and is_live_key(key):
        lines.append(
            f"{SWITCH}=1 with a live STRIPE_API_KEY: the embedded services never run with a "
            f"live key; unset {SWITCH} in production"
        )
    base = _lookup(env, "STRIPE_API_BASE")
    if is_live_key(key) and base and urlsplit(base).scheme != "https":
        lines.append(
            f"STRIPE_API_KEY is a live key but STRIPE_API_BASE is {urlsplit(base).scheme}://"
            f"{urlsplit(base).hostname}: a live key only goes to Stripe over https"
        )
    if not enabled(env):
        lines += [
            f"{name} is not set ({EXAMPLES[name]}): commands that run jobs need it"
            for name in missing(("DAGSTER_HOME",), env)
        ]
        smtp = _lookup(env, "SMTP_URL")
        if not (smtp or "").strip():
            lines.append(SMTP_MISSING)
    return lines


def _lookup(env: Mapping[str, str], name: str) -> str | None:
    # Settings are read case-insensitively (pydantic-settings); so is this check. Dagster reads
    # DAGSTER_HOME by its exact name.
    if name in env or name == "DAGSTER_HOME":
        return env.get(name)
    lowered = name.lower()
    return next((value for key, value in env.items() if key.lower() == lowered), None)
