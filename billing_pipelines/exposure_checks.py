"""`billing doctor`'s checks for settings that expose data: mail in clear, public metrics,
a home folder other users can read. Each check raises one BillingConfigError line."""

from __future__ import annotations

from collections.abc import Callable

from billing_pipelines import sandbox_mode
from billing_pipelines.lib.errors import BillingConfigError
from billing_pipelines.lib.notifications import emails
from billing_pipelines.lib.private_files import open_to_others
from billing_pipelines.settings import Settings, billing_home


def check_smtp_tls(settings: Settings) -> None:
    """SMTP_URL uses TLS (smtps:// or STARTTLS) and never sends credentials in clear."""
    url = settings.smtp_url.get_secret_value() if settings.smtp_url is not None else ""
    # A `file:///folder` sink sends nothing over a network: its own check validates the path.
    if url and sandbox_mode.file_sink(url) is None:
        emails.parse_smtp_url(url)


def check_metrics_private(settings: Settings) -> None:
    """The metrics listener is off or on a loopback interface, never a public one."""
    if settings.metrics_port and not emails.is_loopback_host(settings.metrics_host):
        raise BillingConfigError(
            f"METRICS_HOST={settings.metrics_host} serves /metrics on a non-loopback interface "
            f"(port {settings.metrics_port}): use 127.0.0.1 and scrape through a private network "
            "or a proxy with authentication"
        )


def check_home_private(settings: Settings) -> None:
    """BILLING_HOME (mail sink, sandbox addresses, logs) is not readable by other users."""
    home = billing_home()
    if home.exists() and open_to_others(home):
        mode = oct(home.stat().st_mode & 0o777)
        raise BillingConfigError(
            f"BILLING_HOME {home} is readable by other users (mode {mode}): chmod 700 it"
        )


def exposure_checks(settings: Settings) -> list[tuple[str, Callable[[], object]]]:
    """(name, check) pairs in the shape `billing doctor` runs."""
    return [
        ("smtp tls", lambda: check_smtp_tls(settings)),
        ("metrics listener", lambda: check_metrics_private(settings)),
        ("billing home permissions", lambda: check_home_private(settings)),
    ]
