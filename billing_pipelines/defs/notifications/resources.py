"""The email resource: SMTP in production, .eml files in a folder for local demos."""

import smtplib
from collections.abc import Iterator, Sequence
from pathlib import Path

import dagster as dg

from billing_pipelines.lib.notifications import emails as notifications
from billing_pipelines.lib.notifications.emails import OutboxRow
from billing_pipelines.settings import billing_home, load_settings


class EmailResource(dg.ConfigurableResource):
    """Sends outbox emails over SMTP (SMTP_URL); without SMTP_URL writes them to a folder."""

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
        url = self._smtp_url()
        if url:
            target = notifications.parse_smtp_url(url)
            return f"smtp {target.host}:{target.port}"
        return f"folder {self._sink()}"

    def _sink(self) -> Path:
        return Path(self.sink_dir) if self.sink_dir else billing_home() / "mail"

    def send(self, rows: Sequence[OutboxRow]) -> Iterator[tuple[OutboxRow, str | None]]:
        """Send each row; yields (row, None) when accepted or (row, reason) when not."""
        if not rows:
            return
        sender = self._sender()
        url = self._smtp_url()
        if url is None:
            sink = self._sink()
            sink.mkdir(parents=True, exist_ok=True)
            for row in rows:
                try:
                    message = notifications.build_message(row, sender)
                    (sink / f"{row.id:08d}.eml").write_bytes(bytes(message))
                except (ValueError, OSError) as exc:  # one bad row fails alone
                    yield row, notifications.describe_smtp_error(exc)
                    continue
                yield row, None
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
