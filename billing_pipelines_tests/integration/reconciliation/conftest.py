"""Reconciliation fixtures: a fresh migrated billing database per test."""

from billing_pipelines_tests.webhook_harness import billing_db_url  # noqa: F401 - fixture
