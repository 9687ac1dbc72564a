"""Builds the handler context (transaction, Stripe client, catalog, alert address) for an op."""

from typing import Any

import psycopg
import stripe

from billing_pipelines.lib.catalog import load_catalog
from billing_pipelines.lib.webhook_handlers import HandlerContext
from billing_pipelines.settings import load_settings


def handler_context(
    conn: psycopg.Connection[Any], client: stripe.StripeClient, actor: str
) -> HandlerContext:
    """A HandlerContext for one transaction; `actor` names the run and the trigger."""
    return HandlerContext(
        conn=conn,
        client=client,
        catalog=load_catalog(),
        actor=actor,
        alert_email=load_settings().alert_email,
    )


def describe_error(exc: BaseException) -> str:
    """A one-line, secret-free reason for the queue's last_error column."""
    if isinstance(exc, stripe.StripeError):
        status = exc.http_status or "-"
        return f"Stripe {type(exc).__name__} (HTTP {status}): {exc.user_message or ''}"[:500]
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}"[:500]
