#!/usr/bin/env bash
# Set everything up, then run the checks and the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# The store tests run against a real PostgreSQL; its URL is the last line.
INGEST_TEST_POSTGRES_URL=$(scripts/postgres.sh | tail -n 1)
export INGEST_TEST_POSTGRES_URL
.venv/bin/ruff check ingest tests load bench
.venv/bin/ruff format --check ingest tests load bench
.venv/bin/mypy
.venv/bin/pytest "$@"
