"""Schedules and Stripe-dependent sensors stopped on the sandbox's Dagster instance.

In production they run from the moment the code location loads (their default). On the
sandbox instance nothing serves Stripe once the demo is over, so a daemon started there
(`make ui`) would push usage at 00:10 UTC into a Stripe that is gone and fail every tick. The
demo records them as stopped, exactly as an operator clicking "stop" in the UI would; any of
them can be started again from the UI (with `billing sandbox up` serving Stripe).
"""

from __future__ import annotations

import dagster as dg
from dagster._core.definitions.repository_definition.valid_definitions import (
    SINGLETON_REPOSITORY_NAME,
)
from dagster._core.definitions.run_request import InstigatorType
from dagster._core.remote_origin import RemoteInstigatorOrigin, RemoteRepositoryOrigin
from dagster._core.scheduler.instigation import (
    InstigatorState,
    InstigatorStatus,
    ScheduleInstigatorData,
    SensorInstigatorData,
)

from billing_pipelines.runs import code_location, location_origin

# Sensors whose runs call Stripe; the alert and outbox sensors keep running.
STRIPE_SENSORS = ("webhook_events_sensor", "dunning_sensor")


def stop_stripe_dependent(instance: dg.DagsterInstance) -> list[str]:
    """Record every schedule and Stripe-dependent sensor as stopped; returns their names."""
    origin = location_origin()
    if origin is None:
        return []
    repository = RemoteRepositoryOrigin(origin, SINGLETON_REPOSITORY_NAME)
    definitions = code_location()
    targets: list[tuple[str, InstigatorType, ScheduleInstigatorData | SensorInstigatorData]] = [
        (s.name, InstigatorType.SCHEDULE, ScheduleInstigatorData(s.cron_schedule))
        for s in definitions.get_repository_def().schedule_defs
    ]
    targets += [(name, InstigatorType.SENSOR, SensorInstigatorData()) for name in STRIPE_SENSORS]
    stopped = []
    for name, kind, data in targets:
        wanted = InstigatorState(
            RemoteInstigatorOrigin(repository, name), kind, InstigatorStatus.STOPPED, data
        )
        # Stored by the same ids the webserver and the daemon look the instigator up by.
        stored = instance.get_instigator_state(wanted.instigator_origin_id, wanted.selector_id)
        if stored is None:
            instance.add_instigator_state(wanted)
        elif stored.status != InstigatorStatus.STOPPED:
            instance.update_instigator_state(stored.with_status(InstigatorStatus.STOPPED))
        stopped.append(name)
    return stopped
