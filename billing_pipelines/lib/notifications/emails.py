"""Customer and operator emails: plain-words money, Jinja templates, the outbox, SMTP delivery.

A notification is rendered when it is decided (inside the transaction that decides it) and
stored in `notification_outbox` under a unique dedup key, so one decision is one email however
often it is replayed. A delivery op sends pending rows over SMTP with retries and backoff: the
outbox is the shared leased queue (`lib.pg.queue`) on the `notification_outbox` table.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import smtplib
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal
from email.message import EmailMessage
from email.utils import formatdate
from functools import lru_cache
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote, urlsplit

from billing_pipelines.lib.catalog.plans import Plan
from billing_pipelines.lib.errors import BillingConfigError
from billing_pipelines.lib.pg.queue import LeasedQueue, QueueTable, RetryPolicy
from billing_pipelines.lib.pg.requeue import DeadLetters

if TYPE_CHECKING:
    import jinja2
    import psycopg

TEMPLATES = (
    "payment_reminder",
    "payment_warning",
    "payment_final_warning",
    "suspended",
    "reactivated",
    "plan_changed",
    "trial_ending",
    "ops_alert",
)
_SYMBOLS = {"usd": "$", "eur": "€", "gbp": "£"}


# ---- money in plain words ----------------------------------------------------------------------


def format_money(cents: int | Decimal, currency: str = "usd") -> str:
    """Minor units as "$1,234.56" (rounded half up to the cent, like Stripe's line amounts)."""
    value = (Decimal(cents) / 100).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)
    symbol = _SYMBOLS.get(currency.lower())
    sign = "-" if value < 0 else ""
    text = f"{abs(value):,.2f}"
    return f"{sign}{symbol}{text}" if symbol else f"{sign}{text} {currency.upper()}"


def usage_explanation(plan: Plan, queries: int, currency: str = "usd") -> str:
    """The usage charge in one sentence a customer can check by hand."""
    included = plan.included_queries
    if queries <= included:
        return (
            f"You used {queries:,} queries, within the {included:,} included in your "
            f"{plan.name} plan: no usage charge."
        )
    over = queries - included
    charge = format_money(plan.overage_cents(queries), currency)
    return f"You used {queries:,} queries: {over:,} over the {included:,} included = {charge}"


def tax_sentence(
    subtotal: int | None, tax: int, total: int | None, currency: str = "usd", *, taxed: bool
) -> str:
    """The invoice's tax in words, for every email that states an amount due ("" untaxed).

    An invoice with automatic tax says its tax even when it is zero (no tax where the account
    does not collect it), so the customer never wonders whether tax is still to come.
    """
    if not taxed and not tax:
        return ""
    before = format_money(subtotal if subtotal is not None else 0, currency)
    after = format_money(total if total is not None else (subtotal or 0) + tax, currency)
    return (
        f"The invoice total of {after} includes {format_money(tax, currency)} tax on "
        f"{before} before tax."
    )


def format_day(moment: datetime | None) -> str:
    """A date as "March 14, 2026" (UTC), or "" when unknown."""
    return "" if moment is None else f"{moment:%B} {moment.day}, {moment.year}"


# ---- templates ---------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _environment() -> jinja2.Environment:
    import jinja2

    return jinja2.Environment(
        loader=jinja2.PackageLoader("billing_pipelines.lib.notifications", "templates"),
        undefined=jinja2.StrictUndefined,
        autoescape=False,  # plain-text emails
        keep_trailing_newline=True,
        trim_blocks=False,
    )


@dataclass(frozen=True)
class RenderedEmail:
    """Subject and plain-text body of one email."""

    subject: str
    body: str


def render(template: str, context: Mapping[str, Any]) -> RenderedEmail:
    """Render a named template; a missing context value is an error, never a blank."""
    if template not in TEMPLATES:
        raise ValueError(f"unknown notification template {template!r}")
    env = _environment()
    tmpl = env.get_template(f"{template}.txt.j2")
    ctx = tmpl.new_context(dict(context))
    subject = "".join(tmpl.blocks["subject"](ctx)).strip()
    body = tmpl.render(dict(context)).strip() + "\n"
    return RenderedEmail(subject=" ".join(subject.split()), body=body)


# ---- outbox ------------------------------------------------------------------------------------


def enqueue(
    conn: psycopg.Connection[Any],
    *,
    dedup_key: str,
    tenant_id: str | None,
    template: str,
    recipient: str,
    context: Mapping[str, Any],
) -> bool:
    """Render and store one email under its dedup key; False if that key was already used."""
    email = render(template, context)
    row = conn.execute(
        """
        INSERT INTO notification_outbox (dedup_key, tenant_id, template, recipient, subject,
                                         body, context)
        VALUES (%s, %s, %s, %s, %s, %s, %s::jsonb)
        ON CONFLICT (dedup_key) DO NOTHING
        RETURNING id
        """,
        (
            dedup_key,
            tenant_id,
            template,
            recipient,
            email.subject,
            email.body,
            json.dumps(dict(context), default=str),
        ),
    ).fetchone()
    return row is not None


@dataclass(frozen=True)
class OutboxRow:
    """One email to send."""

    id: int
    dedup_key: str
    recipient: str
    subject: str
    body: str
    attempts: int


# Mail servers recover in minutes to hours: 1 min, 2, 4, ... capped at 1 h, 8 tries.
OUTBOX_POLICY = RetryPolicy(max_attempts=8, base_seconds=60, max_seconds=3600)

# The outbox is the shared leased queue: claimed rows are `sending`. It records no owner: a
# sending run does not re-check its claim (a taken-over row may be sent twice, with the same
# Message-ID, which mail clients collapse).
OUTBOX_TABLE = QueueTable(
    name="notification_outbox",
    claimed_status="sending",
    done_statuses=("sent",),
    done_at="sent_at",
)
OUTBOX: LeasedQueue[OutboxRow] = LeasedQueue(OUTBOX_TABLE, OUTBOX_POLICY, OutboxRow)
# Dead emails as an operator names them: by row id, by template, or queued since.
DEAD_EMAILS = DeadLetters(
    OUTBOX_TABLE, item="dedup_key", kind="template", since="created_at", entity_type="email"
)


def mark_sent(conn: psycopg.Connection[Any], row_id: int) -> None:
    """The SMTP server accepted the message."""
    OUTBOX.complete(conn, row_id, status="sent")


# ---- SMTP --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SmtpTarget:
    """Where and how to submit mail: smtp:// (STARTTLS) or smtps:// (implicit TLS)."""

    host: str
    port: int
    username: str | None
    password: str | None
    implicit_tls: bool
    starttls: bool
    timeout: float = 10.0


SMTP_URL_FORMS = (
    "expected smtp://user:password@host:587 (STARTTLS) or smtps://user:password@host:465 "
    "(implicit TLS); smtp://localhost:25?starttls=false only for a relay on this machine"
)


def is_loopback_host(host: str) -> bool:
    """True for this machine's own addresses (localhost, 127.0.0.0/8, ::1)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_smtp_url(url: str) -> SmtpTarget:
    """Parse SMTP_URL: TLS by default, never credentials in clear, errors without the password."""
    parts = urlsplit(url)
    if parts.scheme not in ("smtp", "smtps") or not parts.hostname:
        raise BillingConfigError(f"SMTP_URL is invalid: {SMTP_URL_FORMS}")
    try:
        port = parts.port
    except ValueError:
        raise BillingConfigError("SMTP_URL is invalid: the port is not a number") from None
    query = parse_qs(parts.query)
    implicit = parts.scheme == "smtps"
    # smtp:// upgrades with STARTTLS unless explicitly turned off; a server that does not offer
    # it fails the delivery instead of silently sending in clear.
    starttls = not implicit and query.get("starttls", ["true"])[0].lower() not in (
        "0",
        "false",
        "no",
    )
    username = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password else None
    if not implicit and not starttls:
        if username or password:
            raise BillingConfigError(
                "SMTP_URL sends credentials without TLS (starttls=false): remove starttls=false "
                "or use smtps://"
            )
        if not is_loopback_host(parts.hostname):
            raise BillingConfigError(
                f"SMTP_URL turns TLS off for {parts.hostname}, which is not this machine: "
                "starttls=false is only for a loopback relay"
            )
    return SmtpTarget(
        host=parts.hostname,
        port=port or (465 if implicit else 25),
        username=username,
        password=password,
        implicit_tls=implicit,
        starttls=starttls,
    )


def message_id(dedup_key: str, domain: str) -> str:
    """A stable Message-ID: a resend after a crash carries the same id, so clients dedupe."""
    return f"<{hashlib.sha256(dedup_key.encode()).hexdigest()[:32]}@{domain}>"


def build_message(row: OutboxRow, sender: str) -> EmailMessage:
    """The RFC 5322 message for one outbox row."""
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = row.recipient
    msg["Subject"] = row.subject
    msg["Date"] = formatdate(usegmt=True)
    msg["Message-ID"] = message_id(row.dedup_key, sender.rsplit("@", 1)[-1].strip("> "))
    msg.set_content(row.body)
    return msg


def open_smtp(target: SmtpTarget) -> smtplib.SMTP:
    """A connected (and authenticated, when configured) SMTP session."""
    context = ssl.create_default_context()
    server: smtplib.SMTP
    if target.implicit_tls:
        server = smtplib.SMTP_SSL(target.host, target.port, timeout=target.timeout, context=context)
    else:
        server = smtplib.SMTP(target.host, target.port, timeout=target.timeout)
        if target.starttls:
            # Raises SMTPNotSupportedError when the server does not offer STARTTLS: the row
            # fails with that reason rather than going out (with its credentials) in clear.
            server.starttls(context=context)
    if target.username and target.password:
        if not (target.implicit_tls or target.starttls):
            server.close()
            raise BillingConfigError("SMTP_URL: refusing to send credentials without TLS")
        server.login(target.username, target.password)
    return server


def describe_smtp_error(exc: BaseException) -> str:
    """A short, secret-free reason for a failed delivery."""
    if isinstance(exc, smtplib.SMTPResponseException):
        text = exc.smtp_error.decode(errors="replace") if isinstance(exc.smtp_error, bytes) else ""
        return f"SMTP {exc.smtp_code}: {text[:200]}"
    return f"{type(exc).__name__}: {str(exc)[:200]}"
