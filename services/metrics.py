"""The service's Prometheus metrics: every counter and histogram ShopRec adds to BentoML's own.

BentoML serves them at ``/metrics`` (open: no token, see ``services.guards.OPEN_PATHS``) beside
its request counts and latencies (``bentoml_service_request_total``,
``bentoml_service_request_duration_seconds``). ``deploy/prometheus.yml`` scrapes them and the
Grafana dashboard in ``deploy/grafana/`` charts them; ``tests/test_monitoring.py`` checks that
every metric the dashboard queries is defined here or by BentoML.

A label set's child is looked up once and kept (``functools.cache``): ``labels(...)`` costs a
dict lookup and a lock per call, on the hot path of /recommend.
"""

from __future__ import annotations

import functools

import bentoml

answers_total = bentoml.metrics.Counter(
    name="shoprec_recommendations_total",
    documentation="Recommendation answers by kind (model or fallback)",
    labelnames=["kind"],
)
batch_sizes = bentoml.metrics.Histogram(
    name="shoprec_recommend_batch_size",
    documentation="/recommend requests that shared one online-store read and model call",
    buckets=(1, 2, 4, 8, 16, 32, 64),
)
impressions_total = bentoml.metrics.Counter(
    name="shoprec_impressions_total",
    documentation="Recommendation lists shown (logged as impressions), by experiment arm and model version",
    labelnames=["arm", "model_version"],
)
attributed_events_total = bentoml.metrics.Counter(
    name="shoprec_attributed_events_total",
    documentation="Events that named the recommendation they came from (recommendation_id), by event type and "
                  "arm; the attribution proper (a shown item, within the window) is the offline report's",
    labelnames=["event_type", "arm"],
)
experiment_assignments_total = bentoml.metrics.Counter(
    name="shoprec_experiment_assignments_total",
    documentation="Requests assigned to an arm of a live experiment",
    labelnames=["experiment", "arm"],
)

# every metric this module defines, as Prometheus exposes it (a counter gains _total only once:
# its name already ends so); the dashboard test reads these
METRIC_NAMES = ("shoprec_recommendations_total", "shoprec_recommend_batch_size", "shoprec_impressions_total",
                "shoprec_attributed_events_total", "shoprec_experiment_assignments_total")


@functools.cache
def answers_of_kind(kind: str):
    return answers_total.labels(kind=kind)


@functools.cache
def impressions(arm: str, model_version: str):
    """The counter child of one (arm, model version): ``impressions(arm, version).inc()``."""
    return impressions_total.labels(arm=arm, model_version=model_version)


@functools.cache
def attributed_events(event_type: str, arm: str):
    """The counter child of one (event type, arm): ``attributed_events("view", arm).inc(n)``."""
    return attributed_events_total.labels(event_type=event_type, arm=arm)


@functools.cache
def experiment_assignments(experiment: str, arm: str):
    """The counter child of one (experiment, arm): ``experiment_assignments(name, arm).inc()``."""
    return experiment_assignments_total.labels(experiment=experiment, arm=arm)

# BentoML's own request metrics, as a scrape of `bentoml serve` shows them (namespace bentoml_service;
# the histogram as _bucket/_sum/_count): what the dashboard's request rate and latency panels read
BENTOML_METRICS = ("bentoml_service_request_total", "bentoml_service_request_duration_seconds",
                   "bentoml_service_request_in_progress", "bentoml_service_last_request_timestamp_seconds")
