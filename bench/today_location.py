"""The code location with the queue-run settings the project shipped before they were tuned.

`bench/event_to_effect.py --settings today` (and `both`) points its daemon at this module, so
the old settings can be measured beside the shipped ones on the same machine in the same run:

- the webhook, dunning and outbox jobs (and every other job) on Dagster's default executor
  (the op in a second process under the multiprocess executor), the queue jobs without the
  `billing/queue` run tag;
- the webhook sensor every 2 s, the dunning and outbox sensors every 5 s;
- the billing schema checked by Alembic in every run process.

The instance side (dagster.yaml without the run coordinator, tag limit and sensor settings)
is `TODAY_DAGSTER_YAML` in the benchmark. The settings are replaced before the definitions are
imported, so the code server, every run process and every step process load the old values.
"""

import dagster as dg

from billing_pipelines.defs import executor, queue_runs
from billing_pipelines.lib.pg import schema_version

queue_runs.WEBHOOK_EVENTS_INTERVAL_SECONDS = 2
queue_runs.DUNNING_INTERVAL_SECONDS = 5
queue_runs.OUTBOX_INTERVAL_SECONDS = 5
queue_runs.QUEUE_RUN_EXECUTOR = dg.multi_or_in_process_executor
executor.RUN_EXECUTOR = dg.multi_or_in_process_executor


def _domain_only(domain: str, queue: str) -> dict[str, str]:
    return {"domain": domain}


def _always_ask_alembic(url: str) -> bool:
    return False


queue_runs.queue_job_tags = _domain_only
schema_version.at_shipped_head = _always_ask_alembic

from billing_pipelines.definitions import defs  # noqa: E402 - after the settings above

__all__ = ["defs"]
