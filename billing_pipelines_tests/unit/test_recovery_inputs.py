"""Operator and customer inputs of recovery: requeue selections, times, addresses, run keys."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from billing_pipelines.lib.dunning.steps import DueStep
from billing_pipelines.lib.errors import BillingConfigError
from billing_pipelines.lib.notifications.recipients import (
    InvalidRecipientError,
    check_configured_addresses,
    check_recipient,
)
from billing_pipelines.lib.pg.requeue import Requeued, Selection, parse_since, skipped_ids


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-12-01T10:00:00Z", datetime(2026, 12, 1, 10, tzinfo=UTC)),
        ("2026-12-01T11:30:00+01:30", datetime(2026, 12, 1, 10, tzinfo=UTC)),
        (" 2026-02-28T23:59:59-05:00 ", datetime(2026, 3, 1, 4, 59, 59, tzinfo=UTC)),
        (None, None),
        ("", None),
    ],
)
def test_since_is_an_aware_instant(text: str | None, expected: datetime | None) -> None:
    assert parse_since(text) == expected


@pytest.mark.parametrize(
    ("text", "fragment"),
    [("yesterday", "is not a time"), ("2026-12-01T10:00:00", "has no time zone")],
)
def test_a_bad_since_is_one_clear_error(text: str, fragment: str) -> None:
    with pytest.raises(BillingConfigError, match=fragment):
        parse_since(text)


def test_a_selection_needs_a_criterion_and_an_aware_time() -> None:
    with pytest.raises(BillingConfigError, match="by id, by type, or since a time"):
        Selection().check()
    with pytest.raises(BillingConfigError, match="time zone"):
        Selection(since=datetime(2026, 12, 1)).check()
    with pytest.raises(BillingConfigError, match="type must not be empty"):
        Selection(kind="  ").check()
    tz = timezone(timedelta(hours=2))
    chosen = Selection(ids=(9, 3), kind="invoice.paid", since=datetime(2026, 12, 1, 12, tzinfo=tz))
    chosen.check()
    assert chosen.describe() == "ids 3,9; type invoice.paid; since 2026-12-01T12:00:00+02:00"


def test_skipped_ids_are_the_named_ids_not_requeued() -> None:
    done = [Requeued(4, "evt_4", "invoice.paid", 8, "x"), Requeued(2, "evt_2", "t", 1, None)]
    assert skipped_ids([7, 4, 2, 7, 1], done) == [1, 7]
    assert skipped_ids([], done) == []


@pytest.mark.parametrize(
    "address",
    [
        "a@b.example, c@d.example",
        "a@b.example\r\nBcc: c@d.example",
        "a@b.example\nX: y",
        "Name <a@b.example>",
        "a@b.example;c@d.example",
        "<a@b.example>",
        "a@@b.example",
        "a@localhost",
        "a@b.invalid",
        "   ",
    ],
)
def test_only_one_plain_address_is_a_recipient(address: str) -> None:
    with pytest.raises(InvalidRecipientError) as refused:
        check_recipient(address)
    assert "\n" not in str(refused.value) and "\r" not in str(refused.value)
    assert isinstance(refused.value, BillingConfigError)  # the CLI's one line, exit 2


def test_good_recipients_are_normalized_only_in_the_domain() -> None:
    assert check_recipient("Ops.Team+billing@Acme.Example") == "Ops.Team+billing@acme.example"
    assert check_recipient("ops@acme.test") == "ops@acme.test"  # reserved for tests


def test_configured_alert_and_sender_addresses() -> None:
    check_configured_addresses(None, "Billing <billing@localhost>")
    check_configured_addresses("oncall@ops.example", "billing@ops.example")
    with pytest.raises(BillingConfigError, match="^ALERT_EMAIL: invalid email address"):
        check_configured_addresses("a@ops.example, b@ops.example", "billing@ops.example")
    for sender in ("a@x.example, b@x.example", "Billing <b@x.example>\r\nBcc: c@y.example", "x"):
        with pytest.raises(BillingConfigError, match="^NOTIFICATION_FROM: "):
            check_configured_addresses(None, sender)


def test_dunning_run_keys_carry_the_dispatch_generation() -> None:
    first = DueStep("in_1", "t1", 3)
    assert first.run_key == "dunning:in_1:3:1"
    assert DueStep("in_1", "t1", 3, dispatch=4).run_key == "dunning:in_1:3:4"
    assert len({DueStep("in_1", "t1", 3, dispatch=d).run_key for d in range(1, 6)}) == 5
