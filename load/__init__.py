"""The load-test harness: realistic Pinpoint SDK traffic against the edge,
accounted end to end through the public API. ``python -m load --help``;
``load.harness.run_load`` from Python; see ``load/README.md``."""
