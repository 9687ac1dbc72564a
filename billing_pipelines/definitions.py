"""Dagster entry point: every definition is autoloaded from the per-domain folders under defs/."""

from pathlib import Path

import dagster as dg


@dg.definitions
def defs() -> dg.Definitions:
    """All assets, checks, jobs, schedules, sensors and resources of billing_pipelines."""
    return dg.load_from_defs_folder(path_within_project=Path(__file__).parent)
