"""The email resource: SMTP in production; .eml files in a folder only when asked for."""

import smtplib
from collections.abc import Iterator, Sequence
from pathlib import Path

import dagster as dg

from billing_pipelines import sandbox_mode
from billing_pipelines.lib.notifications import emails as notifications
from billing_pipelines.lib.notifications.emails import OutboxRow
from billing_pipelines.lib.private_files import private_dir, write_private
from billing_pipelines.settings import billing_home, load_settings

# The reason an email stays unsent when no delivery is configured (recorded on the row).
NOT_CONFIGURED = "SMTP_URL is not set: no mail relay configured (set SMTP_URL, see billing doctor)"


class EmailResource(dg.ConfigurableResource):
    """Sends outbox emails over SMTP (SMTP_URL); to a folder only when explicitly configured."""

    # Unset means "from the environment" (SMTP_URL, NOTIFICATION_FROM), read when a run starts.
    smtp_url: str | None = None
    sender: str | None = None
    sink_dir: str | None = None

    def _sender(self) -> str:
        return self.sender or load_settings().notification_from

    def _smtp_url(self) -> str | None:
        if self.smtp_url:
            return self.smtp_url
        secret = load_settings().smtp_url
        return secret.get_secret_value() if secret else None

    def describe(self) -> str:
        """Where mail goes, without credentials (for logs and metadata)."""
        sink = self._sink()
        if sink is not None:
            return f"folder {sink}"
        url = self._smtp_url()
        if url:
            target = notifications.parse_smtp_url(url)
            return f"smtp {target.host}:{target.port}"
        return "nowhere: SMTP_URL is not set"

    def configured(self) -> bool:
        """True when mail has somewhere to go (SMTP, or a folder that was asked for)."""
        return self._sink() is not None or self._smtp_url() is not None

    def _sink(self) -> Path | None:
        # A folder only when asked for: `sink_dir`, SMTP_URL=file:///path, or the sandbox
        # (BILLING_SANDBOX=1) without SMTP_URL. Otherwise an unset SMTP_URL must not look sent.
        if self.sink_dir:
            return Path(self.sink_dir)
        url = self._smtp_url()
        if url is not None:
            return sandbox_mode.file_sink(url)
        return billing_home() / "mail" if sandbox_mode.enabled() else None

    def send(self, rows: Sequence[OutboxRow]) -> Iterator[tuple[OutboxRow, str | None]]:
        """Send each row; yields (row, None) when accepted or (row, reason) when not."""
        if not rows:
            return
        sender = self._sender()
        sink = self._sink()
        if sink is not None:
            # Customers' names and addresses: the folder is 0700 and each file 0600.
            sink = private_dir(sink)
            for row in rows:
                try:
                    message = notifications.build_message(row, sender)
                    write_private(sink / f"{row.id:08d}.eml", bytes(message))
                except (ValueError, OSError) as exc:  # one bad row fails alone
                    yield row, notifications.describe_smtp_error(exc)
                    continue
                yield row, None
            return
        url = self._smtp_url()
        if url is None:
            for row in rows:
                yield row, NOT_CONFIGURED
            return
        target = notifications.parse_smtp_url(url)
        try:
            server = notifications.open_smtp(target)
        except (OSError, smtplib.SMTPException) as exc:
            reason = notifications.describe_smtp_error(exc)
            for row in rows:
                yield row, reason
            return
        try:
            for row in rows:
                try:
                    server.send_message(notifications.build_message(row, sender))
                    yield row, None
                except smtplib.SMTPServerDisconnected as exc:
                    yield row, notifications.describe_smtp_error(exc)
                    server = notifications.open_smtp(target)
                except (ValueError, OSError, smtplib.SMTPException) as exc:
                    # ValueError: a header the message cannot carry; that row fails alone.
                    yield row, notifications.describe_smtp_error(exc)
        finally:
            try:
                server.quit()
            except (OSError, smtplib.SMTPException):
                server.close()


@dg.definitions
def resources() -> dg.Definitions:
    """The email resource, configured from the environment when a run starts."""
    return dg.Definitions(resources={"email": EmailResource()})
