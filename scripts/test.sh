#!/usr/bin/env bash
# Set everything up, then run the checks and the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
.venv/bin/ruff check ingest tests
.venv/bin/ruff format --check ingest tests
.venv/bin/mypy
.venv/bin/pytest "$@"
