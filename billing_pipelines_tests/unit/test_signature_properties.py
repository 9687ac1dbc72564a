"""Stripe-Signature parsing and verification as properties: window edges, many v1s, bad headers."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from billing_pipelines.lib.webhooks.signature import SignatureError, parse_header, verify

SECRETS = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_", min_size=1, max_size=40)
BODIES = st.binary(max_size=300)
HEX64 = st.text(alphabet="0123456789abcdef", min_size=64, max_size=64)


def stripe_v1(body: bytes, t: int, secret: str) -> str:
    """The v1 scheme as Stripe documents it: hex HMAC-SHA256 of "{t}.{body}" under the secret."""
    return hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()


def refused(body: bytes, header: str | None, secrets: list[str], now: float, **kw: int) -> str:
    with pytest.raises(SignatureError) as err:
        verify(body, header, secrets, now=now, **kw)
    return f"{err.value.reason}: {err.value}"


# No deadline: a loaded machine must not fail a property that is right.
@settings(deadline=None)
@given(
    body=BODIES,
    secret=SECRETS,
    now=st.integers(min_value=10**6, max_value=4 * 10**9),
    tolerance=st.integers(min_value=0, max_value=900),
    offset=st.integers(min_value=-1000, max_value=1000),
)
def test_a_timestamp_is_accepted_exactly_within_the_tolerance_both_ways(
    body: bytes, secret: str, now: int, tolerance: int, offset: int
) -> None:
    t = now + offset
    header = f"t={t},v1={stripe_v1(body, t, secret)}"
    if offset < -tolerance:
        assert refused(body, header, [secret], now, tolerance_seconds=tolerance) == (
            "timestamp_too_old: timestamp outside the tolerance (past)"
        )
    elif offset > tolerance:
        assert refused(body, header, [secret], now, tolerance_seconds=tolerance) == (
            "timestamp_in_future: timestamp outside the tolerance (future)"
        )
    else:
        assert verify(body, header, [secret], now=now, tolerance_seconds=tolerance) == t


@pytest.mark.parametrize(
    ("age", "accepted"),
    [(299, True), (300, True), (300.5, False), (301, False), (-300, True), (-300.5, False)],
)
def test_the_default_tolerance_is_300_seconds_to_the_fraction(age: float, accepted: bool) -> None:
    t = 1_800_000_000
    header = f"t={t},v1={stripe_v1(b'{}', t, 'whsec_a')}"
    if accepted:
        assert verify(b"{}", header, ["whsec_a"], now=t + age) == t
    else:
        assert refused(b"{}", header, ["whsec_a"], t + age).startswith("timestamp_")


# No deadline: a loaded machine must not fail a property that is right.
@settings(deadline=None)
@given(
    body=BODIES,
    secret=SECRETS,
    wrong=st.lists(HEX64, max_size=5),
    position=st.integers(min_value=0, max_value=5),
    others=st.lists(st.sampled_from(["v0", "v2", "x", "t0"]), max_size=3),
)
def test_the_right_v1_verifies_in_any_position_among_wrong_ones_and_other_schemes(
    body: bytes, secret: str, wrong: list[str], position: int, others: list[str]
) -> None:
    t = 1_700_000_000
    good = stripe_v1(body, t, secret)
    wrong = [w for w in wrong if w != good]
    v1s = [*wrong[:position], good, *wrong[position:]]
    parts = [f"t={t}", *(f"v1={s}" for s in v1s), *(f"{k}={good}" for k in others)]
    assert verify(body, ",".join(parts), [secret], now=t) == t
    assert parse_header(",".join(parts)).signatures == tuple(v1s)
    # Without the right one, neither the wrong v1s nor the same value under another scheme pass.
    rest = [p for p in parts if p != f"v1={good}"]
    if wrong:
        assert refused(body, ",".join(rest), [secret], t) == (
            "bad_signature: no signature matches any configured secret"
        )


# No deadline: a loaded machine must not fail a property that is right.
@settings(deadline=None)
@given(
    body=BODIES,
    secrets=st.lists(SECRETS, min_size=1, max_size=4, unique=True),
    which=st.integers(min_value=0, max_value=3),
)
def test_any_configured_secret_verifies(body: bytes, secrets: list[str], which: int) -> None:
    t = 1_750_000_000
    signer = secrets[which % len(secrets)]
    assert verify(body, f"t={t},v1={stripe_v1(body, t, signer)}", secrets, now=t) == t
    outsider = "not_configured_" + "".join(secrets)
    assert refused(body, f"t={t},v1={stripe_v1(body, t, outsider)}", secrets, t).startswith(
        "bad_signature"
    )


@pytest.mark.parametrize(
    "shape",
    [
        "junk,t={t},v1={sig}",  # a part without "=" before the others is skipped, not the end
        "t={t},junk,v1={sig}",
        "t={t},,v1={sig},",
        " t={t} , v1={sig} ",
        "v1={sig},t={t}",
        "t={t},v1=,v1={sig}",  # an empty v1 is not a candidate
    ],
)
def test_tolerated_header_shapes(shape: str) -> None:
    t = 1_800_000_123
    sig = stripe_v1(b"body", t, "whsec_s")
    assert verify(b"body", shape.format(t=t, sig=sig), ["whsec_s"], now=t) == t


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (None, "missing_signature: no Stripe-Signature header"),
        ("", "missing_signature: no Stripe-Signature header"),
        ("t=12=3,v1=ab", "malformed_signature: timestamp is not a number"),
        ("t=,v1=ab", "malformed_signature: timestamp is not a number"),
        ("t=1.5,v1=ab", "malformed_signature: timestamp is not a number"),
        ("v1=ab", "malformed_signature: no timestamp in Stripe-Signature"),
        ("t 5,v1=ab", "malformed_signature: no timestamp in Stripe-Signature"),
        ("T=5,v1=ab", "malformed_signature: no timestamp in Stripe-Signature"),
        ("t=5", "malformed_signature: no v1 signature in Stripe-Signature"),
        ("t=5,v1=", "malformed_signature: no v1 signature in Stripe-Signature"),
        ("t=5,V1=ab", "malformed_signature: no v1 signature in Stripe-Signature"),
    ],
)
def test_malformed_headers_are_refused_with_their_reason(header: str | None, reason: str) -> None:
    assert refused(b"{}", header, ["whsec_a"], 5) == reason


def test_no_secret_is_refused_before_the_header_is_read() -> None:
    assert refused(b"{}", None, [], 5) == "no_secret_configured: no webhook secret is configured"


@pytest.mark.parametrize("candidate", ["\udcff" * 64, "é" * 64, "\x00" * 64, "ab"])
def test_a_non_ascii_or_short_v1_is_a_bad_signature_never_a_crash(candidate: str) -> None:
    # Header text is attacker-controlled; a lone surrogate is what undecodable bytes become.
    assert refused(b"{}", f"t=5,v1={candidate}", ["whsec_a"], 5) == (
        "bad_signature: no signature matches any configured secret"
    )
