"""Safe defaults at the edges: secret URLs, forged signatures in any alphabet, SMTP TLS rules,
private local files, and the doctor's exposure lines."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from billing_pipelines.exposure_checks import (
    check_home_private,
    check_metrics_private,
    check_smtp_tls,
)
from billing_pipelines.lib.errors import BillingConfigError
from billing_pipelines.lib.notifications import emails
from billing_pipelines.lib.private_files import private_dir, write_private
from billing_pipelines.lib.webhooks.signature import SignatureError, expected_signature, verify
from billing_pipelines.settings import load_settings

PASSWORDS = {
    "DATABASE_URL": ("postgresql://billing:pg-Secret-1@db.internal:5432/billing", "pg-Secret-1"),
    "DAGSTER_POSTGRES_URL": (
        "postgresql://dagster:dg-Secret-2@db.internal:5432/dagster",
        "dg-Secret-2",
    ),
    "CLICKHOUSE_URL": ("https://reader:ch-Secret-3@ch.internal:8443/metering", "ch-Secret-3"),
    "SMTP_URL": ("smtps://mailer:smtp-Secret-4@smtp.internal:465", "smtp-Secret-4"),
}


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    for name in (*PASSWORDS, "METRICS_HOST", "METRICS_PORT", "STRIPE_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    yield monkeypatch


def test_connection_urls_are_secrets_in_repr_str_and_dumps(env: pytest.MonkeyPatch) -> None:
    for name, (url, _password) in PASSWORDS.items():
        env.setenv(name, url)
    settings = load_settings()
    shown = " ".join([repr(settings), str(settings), settings.model_dump_json(), f"{settings!r}"])
    for name, (_url, password) in PASSWORDS.items():
        assert password not in shown, name
    # Readers still get the real URL where they need it.
    assert settings.require_database_url() == PASSWORDS["DATABASE_URL"][0]
    assert settings.require_clickhouse_url() == PASSWORDS["CLICKHOUSE_URL"][0]
    assert settings.dagster_postgres_url is not None
    assert settings.dagster_postgres_url.get_secret_value() == PASSWORDS["DAGSTER_POSTGRES_URL"][0]


def test_an_invalid_secret_url_is_still_one_line_without_the_password(
    env: pytest.MonkeyPatch,
) -> None:
    env.setenv("DATABASE_URL", "mysql://billing:pg-Secret-1@db/billing")
    with pytest.raises(BillingConfigError) as info:
        load_settings()
    assert str(info.value).startswith("DATABASE_URL is invalid: expected postgresql://")
    assert "pg-Secret-1" not in str(info.value)


BODY = b'{"id": "evt_1", "object": "event", "type": "invoice.paid"}'
NOW = 1_790_000_123


@pytest.mark.parametrize(
    "v1",
    [
        "é" * 64,  # latin-1 text, as a server decodes header bytes
        "\u00ff" + "0" * 63,
        "\u2603",  # beyond latin-1: not even representable on the wire, still no crash
        expected_signature(BODY, NOW, "whsec_x")[:-1] + "\u00e9",  # one byte off, non-ASCII
    ],
)
def test_non_ascii_v1_signature_is_a_bad_signature_not_a_crash(v1: str) -> None:
    with pytest.raises(SignatureError) as info:
        verify(BODY, f"t={NOW},v1={v1}", ["whsec_x"], now=NOW)
    assert info.value.reason == "bad_signature"
    # A good signature next to a non-ASCII one still verifies (Stripe may send several v1).
    good = expected_signature(BODY, NOW, "whsec_x")
    assert verify(BODY, f"t={NOW},v1={v1},v1={good}", ["whsec_x"], now=NOW) == NOW


@pytest.mark.parametrize(
    ("url", "implicit", "starttls", "port"),
    [
        ("smtp://u:p@mail.example.com", False, True, 25),
        ("smtp://u:p@mail.example.com:587", False, True, 587),
        ("smtp://mail.example.com:587?starttls=true", False, True, 587),
        ("smtps://u:p@mail.example.com", True, False, 465),
        ("smtp://127.0.0.1:2525?starttls=false", False, False, 2525),
        ("smtp://localhost?starttls=no", False, False, 25),
        ("smtp://[::1]:25?starttls=0", False, False, 25),
    ],
)
def test_smtp_is_tls_unless_explicitly_off_for_a_loopback_relay(
    url: str, implicit: bool, starttls: bool, port: int
) -> None:
    target = emails.parse_smtp_url(url)
    assert (target.implicit_tls, target.starttls, target.port) == (implicit, starttls, port)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("smtp://u:hunter2@127.0.0.1:25?starttls=false", "credentials without TLS"),
        ("smtp://u:hunter2@mail.example.com?starttls=false", "credentials without TLS"),
        ("smtp://mail.example.com?starttls=false", "not this machine"),
        ("smtp://10.0.0.5?starttls=false", "not this machine"),
    ],
)
def test_smtp_refuses_clear_text_credentials_and_remote_clear_text(url: str, expected: str) -> None:
    with pytest.raises(BillingConfigError, match=expected) as info:
        emails.parse_smtp_url(url)
    assert str(info.value).startswith("SMTP_URL")
    assert "hunter2" not in str(info.value)
    assert "\n" not in str(info.value)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_private_dir_and_file_modes_ignore_a_permissive_umask(tmp_path: Path) -> None:
    old = os.umask(0o000)  # the widest umask: every mode below must come from the code
    try:
        home = private_dir(tmp_path / "home" / "mail")
        write_private(home / "00000001.eml", b"To: a@example.com\n\nhello\n")
        existing = home / "00000002.eml"
        existing.write_bytes(b"old")
        existing.chmod(0o666)
        write_private(existing, b"new")
    finally:
        os.umask(old)
    assert _mode(tmp_path / "home") == 0o700
    assert _mode(home) == 0o700
    assert _mode(home / "00000001.eml") == 0o600
    assert (home / "00000001.eml").read_bytes() == b"To: a@example.com\n\nhello\n"
    assert (_mode(existing), existing.read_bytes()) == (0o600, b"new")


def test_doctor_exposure_checks_name_each_problem_in_one_line(
    env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    env.setenv("SMTP_URL", "smtp://mailer:hunter2@smtp.example.com:587?starttls=false")
    env.setenv("METRICS_HOST", "0.0.0.0")
    env.setenv("METRICS_PORT", "9100")
    home = tmp_path / "billing"
    home.mkdir()
    home.chmod(0o755)
    env.setenv("BILLING_HOME", str(home))
    settings = load_settings()
    lines = []
    for check in (check_smtp_tls, check_metrics_private, check_home_private):
        with pytest.raises(BillingConfigError) as info:
            check(settings)
        lines.append(str(info.value))
    assert lines[0].startswith("SMTP_URL sends credentials without TLS")
    assert lines[1].startswith("METRICS_HOST=0.0.0.0 serves /metrics on a non-loopback")
    assert lines[2].startswith(f"BILLING_HOME {home} is readable by other users (mode 0o755)")
    assert all("\n" not in line and "hunter2" not in line for line in lines)

    # The safe configuration passes every check.
    env.setenv("SMTP_URL", "smtp://mailer:hunter2@smtp.example.com:587")
    env.setenv("METRICS_HOST", "127.0.0.1")
    home.chmod(0o700)
    safe = load_settings()
    check_smtp_tls(safe)
    check_metrics_private(safe)
    check_home_private(safe)
    env.setenv("METRICS_HOST", "0.0.0.0")
    env.setenv("METRICS_PORT", "0")  # off: nothing is exposed
    check_metrics_private(load_settings())


def test_the_mail_sink_creates_billing_home_0700_and_eml_files_0600(
    env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from billing_pipelines.defs.notifications.resources import EmailResource
    from billing_pipelines.lib.notifications.emails import OutboxRow

    home = tmp_path / "state" / "billing"  # neither folder exists yet
    env.setenv("BILLING_HOME", str(home))
    rows = [
        OutboxRow(
            7, "dunning:in_7:1", "Ada Lovelace <ada@example.com>", "Payment failed", "B\n", 1
        ),
        OutboxRow(8, "dunning:in_8:1", "bob@example.com", "Payment failed", "B\n", 1),
    ]
    old = os.umask(0o022)  # the usual umask, which made 0755 folders and 0644 files
    try:
        results = list(EmailResource(sender="Billing <billing@example.com>").send(rows))
    finally:
        os.umask(old)
    assert [(row.id, reason) for row, reason in results] == [(7, None), (8, None)]
    files = sorted((home / "mail").iterdir())
    assert [f.name for f in files] == ["00000007.eml", "00000008.eml"]
    assert (_mode(home), _mode(home / "mail")) == (0o700, 0o700)
    assert {_mode(f) for f in files} == {0o600}
    assert b"ada@example.com" in files[0].read_bytes()
