"""Automatic tax at onboarding and on an address change: a tenant Stripe Tax cannot locate is
refused in one line before anything is stored or created; a located one is subscribed with
`automatic_tax[enabled]=true`, its address and tax ids on its Stripe customer, and its invoices
carry tax (the sandbox's TEST DATA rate for the US is 5 %)."""

from __future__ import annotations

import os
from dataclasses import replace
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
import stripe
from billing_sandbox.stripe import SandboxHandle
from psycopg.rows import dict_row

from billing_pipelines.defs.resources import BillingDatabase, StripeResource
from billing_pipelines.lib.catalog.plans import CATALOG_PATH_ENV, Catalog, load_catalog
from billing_pipelines.lib.lifecycle import actions as lifecycle
from billing_pipelines.lib.stripe import catalog as catalog_sync
from billing_pipelines.lib.tax.location import TaxLocationError, tax_location
from billing_pipelines.runs import code_location
from billing_pipelines_tests.cli_process import run_billing
from billing_pipelines_tests.support import API_KEY
from billing_pipelines_tests.webhook_harness import query

PACKAGED = Path(__file__).resolve().parents[2] / "billing_pipelines" / "plans.toml"


@pytest.fixture
def taxed_catalog(stripe_client: stripe.StripeClient) -> Catalog:
    loaded = replace(load_catalog(), automatic_tax=True)
    catalog_sync.sync_catalog(stripe_client, loaded)
    return loaded


def _footprint(sandbox: SandboxHandle) -> tuple[int, dict[str, int]]:
    state = sandbox.state
    with state.lock:
        # Kinds with no object are left out: a lookup makes an empty table, not an object.
        return state.data.seq, {k: len(rows) for k, rows in state.data.objects.items() if rows}


def _transaction(url: str) -> Any:
    from contextlib import contextmanager

    @contextmanager
    def open_one() -> Any:
        with psycopg.connect(url, row_factory=dict_row) as conn, conn.transaction():
            yield conn

    return open_one


MISSING: list[tuple[dict[str, Any], str]] = [
    ({}, "missing a country"),
    ({"country": "US"}, "missing a 5-digit US postal code"),
    ({"country": "US", "state": "NY"}, "country and state alone are not enough"),
    ({"country": "CA", "city": "Ottawa"}, "missing a Canadian province"),
]


def _job_resources(url: str, sandbox: SandboxHandle) -> dict[str, Any]:
    return {
        "billing_db": BillingDatabase(url=url),
        "stripe": StripeResource(api_key=API_KEY, api_base=sandbox.url, max_network_retries=0),
    }


def test_onboarding_without_a_tax_location_is_refused_before_anything_is_created(
    fresh_database_url: str,
    stripe_sandbox: SandboxHandle,
    stripe_client: stripe.StripeClient,
    taxed_catalog: Catalog,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url = fresh_database_url
    before = _footprint(stripe_sandbox)
    for n, (where, fragment) in enumerate(MISSING):
        request = lifecycle.OnboardRequest(
            tenant_id=f"t{n}",
            name="Acme",
            email="ops@acme.example",
            plan="pro",
            tax_location=tax_location(**where),
        )
        with pytest.raises(TaxLocationError) as refused:
            lifecycle.onboard_durably(_transaction(url), stripe_client, taxed_catalog, request)
        message = str(refused.value)
        assert "\n" not in message and fragment in message, (where, message)
        assert message.startswith(f"tenant t{n}: automatic tax is on")
    # The Dagster job behind the launchpad and `billing tenant create`, with the catalog file
    # that turns tax on: a failed run naming what is missing.
    taxed = tmp_path / "plans.toml"
    taxed.write_text(PACKAGED.read_text().replace("automatic = false", "automatic = true"))
    monkeypatch.setenv(CATALOG_PATH_ENV, str(taxed))
    job = code_location().resolve_job_def("onboard_tenant")
    config = {"tenant_id": "acme", "name": "Acme", "email": "ops@acme.example", "plan": "pro"}
    result = job.execute_in_process(
        run_config={"ops": {"onboard_tenant_op": {"config": {**config, "country": "US"}}}},
        resources=_job_resources(url, stripe_sandbox),
        raise_on_error=False,
    )
    assert not result.success
    [failure] = [e for e in result.all_events if e.is_step_failure]
    error: Any = failure.step_failure_data and failure.step_failure_data.error
    assert "missing a 5-digit US postal code" in (error.cause or error).message
    # Nothing stored, nothing created in Stripe.
    assert query(url, "SELECT tenant_id FROM tenants") == []
    assert query(url, "SELECT count(*) AS n FROM audit_log") == [{"n": 0}]
    assert _footprint(stripe_sandbox) == before


def test_a_location_only_stripe_refuses_leaves_no_tenant_row_and_no_customer(
    fresh_database_url: str,
    stripe_sandbox: SandboxHandle,
    stripe_client: stripe.StripeClient,
    taxed_catalog: Catalog,
) -> None:
    # "ZZ" has the form of a country code, so the local check lets it through; Stripe knows no
    # such country and refuses the customer (customer_tax_location_invalid).
    url = fresh_database_url
    before = _footprint(stripe_sandbox)
    request = lifecycle.OnboardRequest(
        tenant_id="acme-zz",
        name="Acme",
        email="ops@acme.example",
        plan="pro",
        tax_location=tax_location(country="ZZ"),
    )
    with pytest.raises(TaxLocationError) as refused:
        lifecycle.onboard_durably(_transaction(url), stripe_client, taxed_catalog, request)
    message = str(refused.value)
    assert "\n" not in message and message.startswith("tenant acme-zz: Stripe Tax cannot locate")
    assert "'ZZ'" in message and "nothing was created" in message
    assert query(url, "SELECT tenant_id FROM tenants") == []
    assert query(url, "SELECT count(*) AS n FROM audit_log") == [{"n": 0}]
    assert _footprint(stripe_sandbox) == before
    # A tenant row that existed before the refused attempt is kept (it was not this call's).
    query(
        url,
        "INSERT INTO tenants (tenant_id, name, email, plan) VALUES "
        "('acme-zz', 'Acme', 'ops@acme.example', 'pro') RETURNING tenant_id",
    )
    with pytest.raises(TaxLocationError):
        lifecycle.onboard_durably(_transaction(url), stripe_client, taxed_catalog, request)
    assert query(url, "SELECT tenant_id FROM tenants") == [{"tenant_id": "acme-zz"}]


def test_a_located_tenant_is_subscribed_with_automatic_tax_and_taxed(
    fresh_database_url: str,
    stripe_client: stripe.StripeClient,
    taxed_catalog: Catalog,
) -> None:
    url = fresh_database_url
    request = lifecycle.OnboardRequest(
        tenant_id="acme-us",
        name="Acme",
        email="ops@acme.example",
        plan="pro",
        payment_method="pm_card_visa",
        trial=False,
        tax_location=tax_location(
            country="us", postal_code="94103", state="CA", tax_ids=["us_ein:12-3456789"]
        ),
    )
    result = lifecycle.onboard_durably(_transaction(url), stripe_client, taxed_catalog, request)
    assert result.subscription_status == "active" and result.api_access_enabled
    assert result.customer_id is not None and result.subscription_id is not None
    customer = stripe_client.v1.customers.retrieve(result.customer_id)
    assert customer.address is not None
    assert (customer.address.country, customer.address.postal_code) == ("US", "94103")
    ids = stripe_client.v1.customers.tax_ids.list(result.customer_id).data
    assert [(t.type, t.value) for t in ids] == [("us_ein", "12-3456789")]
    sub = stripe_client.v1.subscriptions.retrieve(result.subscription_id)
    assert sub.automatic_tax.enabled is True
    invoice = stripe_client.v1.invoices.retrieve(str(sub.latest_invoice))
    base = taxed_catalog.plan("pro").base_monthly_cents
    tax = int((Decimal(base) * Decimal("0.05")).quantize(Decimal(1), rounding=ROUND_HALF_UP))
    assert (invoice.total_excluding_tax, invoice.total, invoice.amount_paid) == (
        base,
        base + tax,
        base + tax,
    )
    # Re-running changes nothing (the customer is found by its tenant_id metadata).
    again = lifecycle.onboard_durably(_transaction(url), stripe_client, taxed_catalog, request)
    assert (again.customer_id, again.subscription_id) == (result.customer_id, sub.id)


def test_update_address_moves_the_customer_audited_and_refuses_an_unusable_one(
    fresh_database_url: str,
    stripe_sandbox: SandboxHandle,
    stripe_client: stripe.StripeClient,
    taxed_catalog: Catalog,
) -> None:
    url = fresh_database_url
    request = lifecycle.OnboardRequest(
        tenant_id="acme-de",
        name="Acme",
        email="ops@acme.example",
        plan="starter",
        tax_location=tax_location(country="DE"),
    )
    onboarded = lifecycle.onboard_durably(_transaction(url), stripe_client, taxed_catalog, request)
    assert onboarded.customer_id is not None
    job = code_location().resolve_job_def("update_tenant_address")

    def run(config: dict[str, Any]) -> Any:
        return job.execute_in_process(
            run_config={"ops": {"update_address_op": {"config": config}}},
            resources=_job_resources(url, stripe_sandbox),
            raise_on_error=False,
        )

    audit_before = query(url, "SELECT count(*) AS n FROM audit_log")
    refused = run({"tenant_id": "acme-de", "country": "CA"})
    assert not refused.success
    [failure] = [e for e in refused.all_events if e.is_step_failure]
    error: Any = failure.step_failure_data and failure.step_failure_data.error
    assert "missing a Canadian province" in (error.cause or error).message
    assert query(url, "SELECT count(*) AS n FROM audit_log") == audit_before
    customer = stripe_client.v1.customers.retrieve(onboarded.customer_id)
    assert customer.address is not None and customer.address.country == "DE"

    done = run(
        {
            "tenant_id": "acme-de",
            "country": "de",
            "city": "Berlin",
            "tax_ids": ["eu_vat:DE123456789"],
        }
    )
    assert done.success
    ids = stripe_client.v1.customers.tax_ids.list(onboarded.customer_id).data
    assert [(t.type, t.value) for t in ids] == [("eu_vat", "DE123456789")]
    [row] = query(
        url,
        "SELECT action, before, after FROM audit_log WHERE action = 'tenant.update_address'",
    )
    assert row["before"]["tax_ids"] == [] and row["after"]["tax_ids"] == ["eu_vat:DE123456789"]
    assert row["after"]["address"]["city"] == "Berlin"


def test_billing_tenant_create_and_update_address_refuse_in_one_line_before_starting_anything(
    embedded_services: dict[str, str],
    fresh_database_url: str,
    stripe_sandbox: SandboxHandle,
    tmp_path: Path,
) -> None:
    before = _footprint(stripe_sandbox)
    taxed = tmp_path / "plans.toml"
    taxed.write_text(PACKAGED.read_text().replace("automatic = false", "automatic = true"))
    env = {
        **os.environ,
        **embedded_services,
        "DATABASE_URL": fresh_database_url,
        "STRIPE_API_BASE": stripe_sandbox.url,
        "STRIPE_API_KEY": API_KEY,
        "BILLING_HOME": str(tmp_path / "home"),
        CATALOG_PATH_ENV: str(taxed),
    }
    cases = [
        (
            ["create", "--tenant", "acme", "--plan", "pro", "--email", "ops@acme.example"],
            "missing a country",
        ),
        (
            ["create", "--tenant", "acme", "--plan", "pro", "--email", "ops@acme.example"]
            + ["--country", "US", "--state", "TX"],
            "missing a 5-digit US postal code",
        ),
        (["update-address", "--tenant", "acme", "--country", "CA"], "Canadian province"),
        (
            ["update-address", "--tenant", "acme", "--country", "DE", "--tax-id", "DE1"],
            "is not TYPE:VALUE",
        ),
    ]
    for args, fragment in cases:
        done = run_billing(["tenant", *args], env)
        lines = done.stderr.splitlines()
        assert (done.returncode, done.stdout, len(lines)) == (2, "", 1), done.stderr
        assert lines[0].startswith("error: ") and fragment in lines[0], lines[0]
    assert not (tmp_path / "home").exists()  # no embedded service was started for it
    assert query(fresh_database_url, "SELECT tenant_id FROM tenants") == []
    assert _footprint(stripe_sandbox) == before


def test_subscribing_again_uses_the_address_the_customer_has(
    fresh_database_url: str,
    stripe_client: stripe.StripeClient,
    taxed_catalog: Catalog,
) -> None:
    url = fresh_database_url
    request = lifecycle.OnboardRequest(
        tenant_id="acme-ca",
        name="Acme",
        email="ops@acme.example",
        plan="starter",
        payment_method="pm_card_visa",
        trial=False,
        tax_location=tax_location(country="CA", state="ON"),
    )
    first = lifecycle.onboard_durably(_transaction(url), stripe_client, taxed_catalog, request)
    stripe_client.v1.subscriptions.cancel(str(first.subscription_id))  # e.g. in the Dashboard
    with _transaction(url)() as conn:
        again = lifecycle.reactivate(conn, stripe_client, taxed_catalog, "acme-ca")
    assert again.subscription_id not in (None, first.subscription_id)
    assert again.customer_id == first.customer_id
    sub = stripe_client.v1.subscriptions.retrieve(str(again.subscription_id))
    assert sub.automatic_tax.enabled is True
    invoice = stripe_client.v1.invoices.retrieve(str(sub.latest_invoice))
    # Starter's $29.00 and the sandbox's TEST DATA rate for Canada, 12 %: 348 cents.
    assert (invoice.total_excluding_tax, invoice.total) == (2900, 2900 + 348)
