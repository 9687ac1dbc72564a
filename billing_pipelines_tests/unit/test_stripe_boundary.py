"""The Stripe SDK boundary covers all billing code: every package but lib.stripe is listed."""

from __future__ import annotations

import pkgutil
import tomllib
from pathlib import Path
from types import ModuleType

import billing_pipelines
import billing_pipelines.lib

PYPROJECT = Path(billing_pipelines.__file__).parents[1] / "pyproject.toml"
BOUNDARY = "Only lib.stripe imports the Stripe SDK"


def _children(package: ModuleType) -> set[str]:
    return {f"{package.__name__}.{m.name}" for m in pkgutil.iter_modules(package.__path__)}


def test_every_billing_module_but_lib_stripe_is_forbidden_the_sdk() -> None:
    """A new domain or top-level module is not exempt from the contract by being forgotten."""
    config = tomllib.loads(PYPROJECT.read_text())
    (contract,) = [c for c in config["tool"]["importlinter"]["contracts"] if c["name"] == BOUNDARY]
    expected = (
        _children(billing_pipelines) - {"billing_pipelines.lib"} | _children(billing_pipelines.lib)
    ) - {"billing_pipelines.lib.stripe"}
    assert set(contract["source_modules"]) == expected
    assert contract["forbidden_modules"] == ["stripe"]
    assert contract["allow_indirect_imports"] is True
