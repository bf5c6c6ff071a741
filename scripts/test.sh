#!/usr/bin/env bash
# Set everything up, then run the checks and the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
# Debian's chromium, the real browser tests/test_console_browser.py drives
# with Playwright (executable_path=/usr/bin/chromium: Playwright's own browser
# download is never used).
if [ ! -x /usr/bin/chromium ]; then
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
echo "test: chromium ready ($(/usr/bin/chromium --version 2>/dev/null | head -n 1))"
# The lint and type checks of .pre-commit-config.yaml (local hooks, the
# locked tools in .venv: nothing is fetched).
.venv/bin/pre-commit run --all-files --show-diff-on-failure
# The tests find or start the test PostgreSQL themselves (tests/postgres.py);
# starting it here once keeps the xdist workers from queueing on it.
INGEST_TEST_POSTGRES_URL=$(scripts/postgres.sh | tail -n 1)
export INGEST_TEST_POSTGRES_URL
# Four workers on two cores: without coverage most of the suite waits on
# subprocesses (with three, the suite took 482 s here; with four, 351 s).
# A file's tests stay on one worker (loadfile), so module-scoped servers
# start once; files go out longest first (tests/conftest.py, SLOWEST_FILES).
# Coverage covers the `ingest` subprocesses too; its floor (pyproject.toml)
# holds for the whole suite, so a run narrowed by arguments reports it only.
# With coverage the suite is CPU-bound on two cores (about 760 CPU-s, a third
# of it the tracer): the whole of .ci/run took 7m53s to 9m18s here (pytest
# 371-447 s) on 2026-12-03, once the tracer sampled property tests and
# skipped the long load files (tests/conftest.py).
floor=()
[ "$#" -eq 0 ] || floor=(--cov-fail-under=0)
.venv/bin/pytest -n 4 --dist loadfile --no-loadscope-reorder --durations=30 --cov --cov-report=term "${floor[@]}" "$@"
