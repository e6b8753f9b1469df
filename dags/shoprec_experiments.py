"""shoprec_experiments (hourly): the live experiment's online test.

One task, ``online_test``: the impressions and events so far, attributed
(``shoprec.impressions``), per arm; a fixed-horizon two-proportion test per challenger
(``training.online_test``). A challenger that wins is released (loaded as the service loads it,
then promoted through the registry: the service swaps at its next pointer poll); one that loses,
or draws at the horizon, is stopped (the service stops routing traffic to it). Below the horizon
nothing changes. The verdicts are in the task log and its XCom return value.

Wiring only: the task calls ``entrypoints.steps.online_experiment``. With no experiment
configured (``settings.experiments.name``) it returns at once.
"""

from __future__ import annotations

from datetime import datetime, timezone

from airflow.sdk import CronTriggerTimetable, dag, task

from entrypoints import steps
from shoprec.config import load_settings


@dag(
    dag_id="shoprec_experiments",
    schedule=CronTriggerTimetable("30 * * * *", timezone="UTC"),
    start_date=datetime(2026, 1, 1, tzinfo=timezone.utc),
    catchup=False,
    max_active_runs=1,
    default_args=steps.task_defaults(load_settings()),
    tags=["shoprec", "experiments"],
    doc_md=__doc__,
)
def shoprec_experiments():
    @task
    def online_test() -> dict:
        return steps.online_experiment(load_settings())

    online_test()


shoprec_experiments()
