"""The synthetic shop (``simulator.shop``) and its catalog data (``simulator.catalog``).

Apart from the product: it imports only the core (``shoprec.schema``, ``shoprec.adapters``);
``shoprec generate``, the demo, the tests and the benchmarks use it.
"""
