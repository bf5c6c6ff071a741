#!/usr/bin/env bash
# Set everything up, then run the whole pipeline on this machine with
# embedded defaults: Tansu broker with its log on disk (s3rver) and SQLite,
# both under ./data, the edge on 127.0.0.1:8080. Extra arguments go to `ingest run` (e.g. --port 9000).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/ingest run "$@"
