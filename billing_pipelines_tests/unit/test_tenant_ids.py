"""The tenant id rule: what billing accepts as a new tenant id, and the errors for the rest."""

from __future__ import annotations

from datetime import date

import pytest

from billing_pipelines.lib.errors import BillingConfigError
from billing_pipelines.lib.metering.planning import MAX_IDENTIFIER, identifier_for
from billing_pipelines.lib.tenants.ids import (
    MAX_TENANT_ID_LENGTH,
    InvalidTenantIdError,
    check_tenant_id,
)


@pytest.mark.parametrize("tenant_id", ["t001", "acme", "lc-1a2b3c4d", "Acme_Corp.eu-1", "x" * 64])
def test_plain_ids_are_accepted_unchanged(tenant_id: str) -> None:
    assert check_tenant_id(tenant_id) == tenant_id


@pytest.mark.parametrize(
    ("tenant_id", "message"),
    [
        ("t'; DROP TABLE tenants;--", "characters not allowed: ' ' \"'\" ';'"),
        ('t"x', "characters not allowed: '\"'"),
        ("t\\", "characters not allowed: '\\\\'"),
        ("tënant", "characters not allowed: 'ë'"),
        ("租户", "characters not allowed: '户' '租'"),
        ("t\nx", "characters not allowed: '\\n'"),
        ("a:b", "characters not allowed: ':'"),
        ("-leading", "starting with a letter or digit"),
        ("", "tenant id is empty"),
        ("x" * 65, "is 65 characters long (at most 64)"),
        ("y" * 10_000, "is 10000 characters long"),
    ],
)
def test_other_ids_are_refused_with_the_rule(tenant_id: str, message: str) -> None:
    with pytest.raises(InvalidTenantIdError) as refused:
        check_tenant_id(tenant_id)
    assert message in str(refused.value)
    assert isinstance(refused.value, BillingConfigError)  # the CLI prints it as one line
    assert len(str(refused.value)) < 250  # a 10,000-character id is not echoed back whole


def test_longest_allowed_id_fits_stripe_identifiers_without_hashing() -> None:
    longest = "t" * MAX_TENANT_ID_LENGTH
    identifier = identifier_for(longest, "queries", date(2026, 1, 31), 86_399)
    assert len(identifier) <= MAX_IDENTIFIER and identifier.endswith(longest)
