"""What the fork server behind `cli_process.run_billing` imports once: all the command needs.

The code location's own modules are imported here only to bring in what they import (Dagster's
submodules, the Stripe SDK, the database drivers), then forgotten: they read a setting when
imported (the first partition day), so each call imports them again under its own environment.
"""

import contextlib
import importlib
import sys

import billing_pipelines.cli
import billing_pipelines.runs
from billing_pipelines_tests.cli_process import location_modules

# A setting this worker's environment lacks must not stop the fork server: the child that needs
# the module imports it, and reports the setting, itself.
with contextlib.suppress(Exception):
    importlib.import_module("billing_pipelines.definitions")
    for name in location_modules():
        importlib.import_module(name)
for name in [
    m
    for m in sys.modules
    if m.startswith(("billing_pipelines.defs", "billing_pipelines.definitions"))
]:
    del sys.modules[name]
for attribute in ("defs", "definitions"):
    if hasattr(billing_pipelines, attribute):
        delattr(billing_pipelines, attribute)
