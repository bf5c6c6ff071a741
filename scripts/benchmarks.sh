#!/usr/bin/env bash
# Regenerate BENCHMARKS.md: set everything up, then measure every part in one
# run on this machine (about 10 minutes; run it on an otherwise idle machine):
# `python -m load.report` runs each `python -m bench` part and the
# `python -m load` runs, and assembles their reports.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
PG=$(scripts/postgres.sh | tail -n 1)
exec .venv/bin/python -m load.report --postgres "$PG" "$@"
