"""Email recipients: exactly one valid address, checked when stored and again before sending.

A recipient with a CR/LF would inject headers, one with a comma or a display name would become
several recipients; both are refused with one clear reason. Validation is syntax only (no DNS):
onboarding must not depend on the network, and the mail relay reports undeliverable domains.
"""

from __future__ import annotations

from email.utils import getaddresses

from billing_pipelines.lib.errors import BillingConfigError


class InvalidRecipientError(BillingConfigError):
    """The text is not exactly one valid email address (an input error: one line, exit 2)."""


def check_recipient(address: str) -> str:
    """The address, normalized (domain lower-cased), or InvalidRecipientError saying why not."""
    if not isinstance(address, str) or not address.strip():
        raise InvalidRecipientError("email address is empty")
    shown = address.encode("unicode_escape").decode("ascii")[:80]
    # Imported here: the Dagster definitions import this module, and only a check needs it.
    from email_validator import EmailNotValidError, validate_email

    try:
        # test_environment allows the reserved `.test` names (never delivered anywhere) and turns
        # off DNS lookups; every other special-use domain (localhost, .invalid, ...) is refused.
        checked = validate_email(address, check_deliverability=False, test_environment=True)
    except EmailNotValidError as exc:
        raise InvalidRecipientError(f"invalid email address {shown!r}: {exc}") from None
    return str(checked.normalized)


def check_configured_addresses(alert_email: str | None, sender: str) -> None:
    """Refuse an ALERT_EMAIL that is not one valid address, or a NOTIFICATION_FROM that is not one
    mailbox: either would dead-letter every alert or every email at send time."""
    if alert_email is not None:
        try:
            check_recipient(alert_email)
        except InvalidRecipientError as exc:
            raise BillingConfigError(f"ALERT_EMAIL: {exc}") from None
    mailboxes = getaddresses([sender])
    if any(ch in sender for ch in "\r\n") or len(mailboxes) != 1 or "@" not in mailboxes[0][1]:
        shown = sender.encode("unicode_escape").decode("ascii")[:80]
        raise BillingConfigError(
            f"NOTIFICATION_FROM: {shown!r} is not one mailbox, e.g. 'Billing <billing@example.com>'"
        )
