"""The daily drift and health report: what the event stream, the online store and the served
models look like today against the days before.

- ``drift``: distributions and their distances on event frames (event-type mix, item
  popularity over the top N, unknown items and users): pure functions of frames.
- ``health``: the age of online rows and the online CTR per model version, from frames.
- ``report``: the typed report, its thresholds (``Breach``), and ``build_report``, which reads
  the lake, the real-time event log, the online store and the impression log for one day.
- ``render``: the report as JSON, HTML and PNG plots under ``<home>/reports/monitoring/<day>/``.

The served model's facts (vocabulary, training data end, offline metrics per version) come
from the registry one layer up (``training.monitoring``), handed in as plain values.
"""
