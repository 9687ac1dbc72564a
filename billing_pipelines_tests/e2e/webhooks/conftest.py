"""Webhook and dunning fixtures: fresh database, receiver, SMTP server, sensor pump."""

from billing_pipelines_tests.webhook_harness import (  # noqa: F401 - fixtures
    billing_db_url,
    harness,
    smtp_server,
)
