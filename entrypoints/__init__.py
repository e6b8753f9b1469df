"""The top layer: what an operator or the orchestrator starts.

The ``shoprec`` CLI (``entrypoints.cli``), the pipeline steps the Airflow DAGs call
(``entrypoints.steps``), running Airflow (``entrypoints.airflow_env``) and ``bentoml serve``
(``entrypoints.serving``). It may import every layer below (services, training, the
``shoprec`` core, the simulator); nothing below imports it.
"""
