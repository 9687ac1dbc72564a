"""Signature verification: several secrets, both sides of the timestamp window, bad headers."""

from __future__ import annotations

import pytest
import stripe

from billing_pipelines.lib.webhooks.signature import SignatureError, expected_signature, verify

BODY = b'{"id": "evt_1", "object": "event", "type": "invoice.paid"}'
NOW = 1_800_000_000


def header(secret: str, t: int = NOW, body: bytes = BODY) -> str:
    return f"t={t},v1={expected_signature(body, t, secret)}"


def test_matches_the_stripe_sdk() -> None:
    h = header("whsec_a")
    stripe.WebhookSignature.verify_header(BODY.decode(), h, "whsec_a", tolerance=None)
    assert verify(BODY, h, ["whsec_a"], now=NOW) == NOW


def test_any_configured_secret_verifies_during_rotation() -> None:
    assert verify(BODY, header("whsec_old"), ["whsec_new", "whsec_old"], now=NOW) == NOW
    # Stripe sends one v1 per active secret during its own rotation window.
    both = f"t={NOW},v1={'0' * 64},v1={expected_signature(BODY, NOW, 'whsec_new')}"
    assert verify(BODY, both, ["whsec_new"], now=NOW) == NOW


@pytest.mark.parametrize(
    ("hdr", "reason"),
    [
        (None, "missing_signature"),
        ("", "missing_signature"),
        ("garbage", "malformed_signature"),
        (f"t=abc,v1={'0' * 64}", "malformed_signature"),
        (f"t={NOW}", "malformed_signature"),
        (f"v1={'0' * 64}", "malformed_signature"),
        (f"t={NOW},v0={'0' * 64}", "malformed_signature"),
    ],
)
def test_bad_headers(hdr: str | None, reason: str) -> None:
    with pytest.raises(SignatureError) as err:
        verify(BODY, hdr, ["whsec_a"], now=NOW)
    assert err.value.reason == reason


def test_wrong_secret_and_tampered_body() -> None:
    with pytest.raises(SignatureError, match="no signature matches") as err:
        verify(BODY, header("whsec_other"), ["whsec_a"], now=NOW)
    assert err.value.reason == "bad_signature"
    with pytest.raises(SignatureError):
        verify(BODY.replace(b"paid", b"void"), header("whsec_a"), ["whsec_a"], now=NOW)


@pytest.mark.parametrize(
    ("offset", "reason"), [(-301, "timestamp_too_old"), (301, "timestamp_in_future")]
)
def test_timestamps_outside_the_window_both_ways(offset: int, reason: str) -> None:
    h = header("whsec_a", t=NOW + offset)
    with pytest.raises(SignatureError) as err:
        verify(BODY, h, ["whsec_a"], now=NOW, tolerance_seconds=300)
    assert err.value.reason == reason
    assert verify(BODY, header("whsec_a", t=NOW + offset // 301 * 300), ["whsec_a"], now=NOW)


def test_errors_never_contain_secret_or_signature() -> None:
    h = header("whsec_topsecret", t=NOW)
    with pytest.raises(SignatureError) as err:
        verify(BODY, h, ["whsec_other_topsecret"], now=NOW)
    text = str(err.value) + err.value.reason
    assert "topsecret" not in text and h.split("v1=")[1] not in text


def test_no_secret_configured_is_refused() -> None:
    with pytest.raises(SignatureError) as err:
        verify(BODY, header("x"), [], now=NOW)
    assert err.value.reason == "no_secret_configured"
