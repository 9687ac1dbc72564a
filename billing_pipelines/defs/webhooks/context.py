"""Builds the handler context (transaction, Stripe client, catalog, alert address) for an op."""

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from billing_pipelines.lib.catalog.plans import Catalog, load_catalog
from billing_pipelines.lib.stripe.client import describe_error as describe_stripe_error
from billing_pipelines.lib.webhooks.batch_reads import BatchReads
from billing_pipelines.lib.webhooks.handlers import HandlerContext
from billing_pipelines.settings import load_settings

if TYPE_CHECKING:
    import psycopg

    from billing_pipelines.lib.stripe.client import StripeClient


@dataclass(frozen=True)
class HandlerSetup:
    """What every event a run handles shares, read once per run (not once per event)."""

    client: "StripeClient"
    catalog: Catalog
    alert_email: str | None
    livemode: bool | None = None
    # Set for a webhook run: the Stripe objects its events concern are read once per run.
    reads: BatchReads | None = None

    def context(self, conn: "psycopg.Connection[Any]", actor: str) -> HandlerContext:
        """A HandlerContext for one transaction; `actor` names the run and the trigger."""
        return HandlerContext(
            conn=conn,
            client=self.client,
            catalog=self.catalog,
            actor=actor,
            alert_email=self.alert_email,
            livemode=self.livemode,
            reads=self.reads,
        )


def handler_setup(
    client: "StripeClient",
    *,
    alert_email: str | None = None,
    livemode: bool | None = None,
    reads: BatchReads | None = None,
) -> HandlerSetup:
    """Read the catalog and the alert address (unset: ALERT_EMAIL) for one run's handlers."""
    if alert_email is None:
        alert_email = load_settings().alert_email
    return HandlerSetup(client, load_catalog(), alert_email, livemode, reads)


def handler_context(
    conn: "psycopg.Connection[Any]", client: "StripeClient", actor: str
) -> HandlerContext:
    """A HandlerContext for a run that handles a single transaction."""
    return handler_setup(client).context(conn, actor)


def describe_error(exc: BaseException) -> str:
    """A one-line, secret-free reason for the queue's last_error column."""
    from billing_pipelines.lib.stripe.client import StripeError

    if isinstance(exc, StripeError):
        # The same line the CLI prints: type, code, message, HTTP status, request id.
        return describe_stripe_error(exc)[:500]
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}"[:500]
