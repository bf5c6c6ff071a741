#!/usr/bin/env bash
# Regenerate BENCHMARKS.md: set everything up, then measure every part in one
# run on this machine (about 15 minutes; run it on an otherwise idle machine):
# `python -m load.report` runs each `python -m bench` part and the
# `python -m load` runs, profiles what misses its target (py-spy, which needs
# ptrace: root here), and assembles their reports.
# `scripts/benchmarks.sh --quick` checks the machinery in a few minutes, every
# part at tiny durations (its figures mean nothing, so it writes
# /tmp/BENCHMARKS-quick.md unless given --out);
# `--profile-all` profiles every measured target, met or not.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
PG=$(scripts/postgres.sh | tail -n 1)
exec .venv/bin/python -m load.report --postgres "$PG" "$@"
