"""One module per peer library for benchmarks/peers_smoke.py: ``check_<peer>.py`` with ``import_<peer>()`` and
``run_<peer>(setup, recorder)``."""
