"""The real-time recommendation service (BentoML) and its pure, framework-free logic.

Only ``services/service.py`` and ``services/registry.py`` import BentoML; every other
module here is plain Python so it can be unit-tested without a server.
"""
