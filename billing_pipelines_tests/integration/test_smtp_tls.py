"""Customer email and SMTP credentials never travel in clear: against a real SMTP server that
offers no STARTTLS (and would accept a plain-text login), delivery fails with the reason and the
server never sees the credentials."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from billing_pipelines.defs.notifications.resources import EmailResource
from billing_pipelines.lib.notifications.emails import OutboxRow
from billing_pipelines_tests.webhook_harness import free_port

PASSWORD = "smtp-Pass-7f3"


@dataclass
class _Recorder:
    """Accepts any login and any message, and remembers both."""

    logins: list[tuple[str, str]] = field(default_factory=list)
    messages: list[bytes] = field(default_factory=list)

    def __call__(
        self, server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any
    ) -> AuthResult:
        if isinstance(auth_data, LoginPassword):
            self.logins.append((auth_data.login.decode(), auth_data.password.decode()))
        return AuthResult(success=True)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(envelope.content)
        return "250 accepted"


@pytest.fixture
def plain_server() -> Iterator[tuple[int, _Recorder]]:
    """An SMTP server without TLS that would take AUTH PLAIN/LOGIN in clear."""
    recorder = _Recorder()
    port = free_port()
    controller = Controller(
        recorder,
        hostname="127.0.0.1",
        port=port,
        authenticator=recorder,
        auth_require_tls=False,
    )
    controller.start()
    try:
        yield port, recorder
    finally:
        controller.stop()


ROWS = [
    OutboxRow(1, "dunning:in_1:1", "ada@example.com", "Payment failed", "Your card...\n", 1),
    OutboxRow(2, "dunning:in_2:1", "bob@example.com", "Payment failed", "Your card...\n", 1),
]


def test_smtp_url_without_starttls_parameter_never_logs_in_or_sends_in_clear(
    plain_server: tuple[int, _Recorder],
) -> None:
    port, recorder = plain_server
    email = EmailResource(
        smtp_url=f"smtp://mailer:{PASSWORD}@127.0.0.1:{port}",
        sender="Billing <billing@example.com>",
    )
    results = list(email.send(ROWS))
    assert [row.id for row, _ in results] == [1, 2]
    reasons = {reason for _, reason in results}
    assert len(reasons) == 1
    [reason] = reasons
    assert reason is not None and "STARTTLS" in reason
    assert PASSWORD not in reason
    assert recorder.logins == []  # the credentials never left the client
    assert recorder.messages == []  # nor did the customers' emails


def test_explicit_plaintext_to_a_loopback_relay_without_credentials_still_delivers(
    plain_server: tuple[int, _Recorder],
) -> None:
    port, recorder = plain_server
    email = EmailResource(
        smtp_url=f"smtp://127.0.0.1:{port}?starttls=false", sender="Billing <billing@example.com>"
    )
    assert [(row.id, reason) for row, reason in email.send(ROWS)] == [(1, None), (2, None)]
    assert len(recorder.messages) == 2
    assert recorder.logins == []
