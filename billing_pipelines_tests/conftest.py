"""Shared fixtures: the real embedded services, started once per test session."""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import stripe
from billing_sandbox import instance_probes, services
from billing_sandbox.stripe import SandboxHandle, Settings, run_in_thread

from billing_pipelines import sandbox_mode
from billing_pipelines.lib.stripe import client as stripe_api
from billing_pipelines_tests.support import API_KEY

# The order modules run in (longest first, by their recorded seconds) and, with parallel
# workers, the scheduler that keeps a long module from queueing behind another.
pytest_plugins = ("billing_pipelines_tests.xdist_order",)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--stripe-live",
        action="store_true",
        help="Also run tests marked stripe_live against real Stripe test mode (STRIPE_API_KEY).",
    )


def pytest_configure(config: pytest.Config) -> None:
    """Tests run on the embedded services: the sandbox switch is on for the whole session."""
    # Subprocesses (the `billing` command, the daemon, the webserver) inherit it; tests of
    # behaviour outside the sandbox remove it from their own environment.
    os.environ[sandbox_mode.SWITCH] = "1"
    # Every sandbox in the suite (in-process or a subprocess) checks each answer of its
    # due-work index against a scan of every object, so the index is proven on every test.
    os.environ["BILLING_SANDBOX_VERIFY_DUE"] = "1"
    # Dagster's storages stop asking PostgreSQL's catalog the same schema question on every
    # run and event (a tenth of a simulated month); see the module for why that is safe.
    instance_probes.install()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """stripe_live tests run only when asked for, with a test-mode key."""
    key = os.environ.get("STRIPE_API_KEY", "")
    if config.getoption("--stripe-live") and key.startswith(("sk_test_", "rk_test_")):
        return
    reason = (
        "needs --stripe-live and STRIPE_API_KEY=sk_test_... (real Stripe test mode)"
        if not key.startswith(("sk_test_", "rk_test_"))
        else "real Stripe test mode runs only with --stripe-live"
    )
    for item in items:
        if "stripe_live" in item.keywords:
            item.add_marker(pytest.mark.skip(reason=reason))


SERVICE_VARS = (
    "DATABASE_URL",
    "DAGSTER_POSTGRES_URL",
    "CLICKHOUSE_URL",
    "DAGSTER_HOME",
    "STRIPE_API_BASE",
    "STRIPE_API_KEY",
)


@pytest.fixture(scope="session")
def billing_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private BILLING_HOME for this test session."""
    return tmp_path_factory.mktemp("billing_home")


@pytest.fixture(scope="session")
def embedded_services(billing_home: Path) -> Iterator[dict[str, str]]:
    """Embedded PostgreSQL, the chDB bridge and the Stripe sandbox, as `billing sandbox up` does."""
    saved = {key: os.environ.get(key) for key in (*SERVICE_VARS, "BILLING_HOME")}
    env = services.up(billing_home)
    os.environ["BILLING_HOME"] = str(billing_home)
    os.environ.update(env)
    try:
        yield env
    finally:
        services.down(billing_home)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture
def stripe_sandbox() -> Iterator[SandboxHandle]:
    """A fresh in-process Stripe sandbox (empty state) per test; webhook retries in milliseconds."""
    # A seed of its own: ids are a sequence number and characters drawn from the seed, so two
    # sandboxes on one seed hand out the same ids in the same order, and a tenant row written by
    # one test would collide with another's in the session's database (the CLI tests use it).
    handle = run_in_thread(port=0, seed=random.randrange(1, 10**9))
    handle.state.settings = Settings(webhook_backoff_seconds=[0.05, 0.1, 0.2])
    try:
        yield handle
    finally:
        handle.stop()


@pytest.fixture
def stripe_client(stripe_sandbox: SandboxHandle) -> stripe.StripeClient:
    """The official SDK pointed at the per-test sandbox."""
    return stripe_api.make_client(API_KEY, api_base=stripe_sandbox.url, max_network_retries=0)


@pytest.fixture(scope="session")
def migrated_template(embedded_services: dict[str, str]) -> str:
    """A migrated database that per-test databases are copied from (CREATE DATABASE TEMPLATE)."""
    from psycopg import sql

    from billing_pipelines.lib.pg import migrations

    admin = embedded_services["DATABASE_URL"].rsplit("/", 1)[0] + "/postgres"
    name = "billing_template"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = admin.rsplit("/", 1)[0] + f"/{name}"
    migrations.upgrade_to_head(url)
    return url


@pytest.fixture
def fresh_database_url(migrated_template: str) -> Iterator[str]:
    """An empty, fully migrated billing database of this test's own (dropped afterwards).

    Sandboxes number their objects deterministically, so two tests' Stripe ids can coincide:
    a database per test keeps them from meeting in one tenants table.
    """
    import uuid

    from psycopg import sql

    admin = migrated_template.rsplit("/", 1)[0] + "/postgres"
    name = f"t_{uuid.uuid4().hex[:10]}"
    template = migrated_template.rsplit("/", 1)[1]
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(template)
            )
        )
    try:
        yield admin.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))
