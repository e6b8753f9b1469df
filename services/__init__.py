"""The real-time recommendation service (BentoML) and its pure, framework-free logic.

Only ``services/service.py`` imports BentoML; every other
module here is plain Python so it can be unit-tested without a server.
"""
