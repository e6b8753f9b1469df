"""What an ``airflow celery worker`` imports once, at start, before it forks a process per task
(Airflow's ``[celery] celery_config_options`` names ``CELERY_CONFIG``; ``entrypoints.airflow_env``
sets it with ``airflow.executor: CeleryExecutor``).

A ShopRec task imports its heavy stack (Great Expectations, Feast, torch) inside its step, so
the DAG files parse in a second; but every task process would then import it anew, 10-40 s
a task on two busy cores. A worker that imported the stacks already hands them to each task
process it forks, so a task starts in about a second. Airflow's own Celery configuration is
kept as it is; only Celery's ``imports`` are added.
"""

from __future__ import annotations

from airflow.providers.celery.executors.default_celery import DEFAULT_CELERY_CONFIG

# the modules the steps of entrypoints.steps import lazily (its "heavy" imports)
TASK_MODULES = (
    "entrypoints.steps",
    "shoprec.ingest",
    "shoprec.features.tables",
    "shoprec.features.store",
    "shoprec.erasure",
    "training.champion",
    "training.registry",
    "services.bundle",
    "services.client",
)

CELERY_CONFIG = {**DEFAULT_CELERY_CONFIG, "imports": (*DEFAULT_CELERY_CONFIG.get("imports", ()), *TASK_MODULES)}
