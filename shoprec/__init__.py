"""ShopRec: real-time, Transformer-based product recommendations.

The shared package: configuration, the canonical data model, ingestion adapters,
cleaning, validation, feature builders and the ``shoprec`` CLI. It never imports
Airflow or BentoML; those live in ``dags/`` and ``services/``.
"""

__version__ = "0.1.0"
