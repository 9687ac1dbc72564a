"""Every run's executor: the code location's default, so each run is one process.

Under Dagster's default (multiprocess) executor a daemon-launched run starts a run process and
then a second interpreter per step, each importing Dagster, loading the definitions and setting
up the resources again. In process, the steps run one after another inside the run's process.
What that gives up, and why it is safe here, is in ARCHITECTURE.md "How runs execute".
"""

import dagster as dg

# Read when the definitions are built (not bound at import), so a benchmark's location can put
# the old default back before loading them (bench/today_location.py).
RUN_EXECUTOR: dg.ExecutorDefinition = dg.in_process_executor


@dg.definitions
def run_executor() -> dg.Definitions:
    """The executor of every job that does not declare its own, the implicit asset job included."""
    return dg.Definitions(executor=RUN_EXECUTOR)
