#!/usr/bin/env bash
# Set up everything `ingest` needs on a fresh Debian machine with Python 3.11:
# a virtualenv at .venv with the locked dependencies and `ingest` installed,
# node (from PATH, else Debian's) with s3rver, the disk-backed S3 server the
# embedded broker of `ingest run` keeps its log in (embedded/package-lock.json),
# and what tests/js/package-lock.json pins: the JavaScript clients, and
# kinesalite, the Kinesis the event-stream tests deliver to.
# Safe to run again: it reinstalls only when requirements.lock or a
# package-lock.json changed.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

python=""
for candidate in python3.11 python3; do
  if command -v "$candidate" >/dev/null 2>&1 &&
     "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
    python=$(command -v "$candidate"); break
  fi
done
if [ -z "$python" ]; then
  echo "setup: Python 3.11 is required (python3.11 or python3 on PATH)" >&2
  exit 1
fi

if [ ! -x .venv/bin/python ]; then
  if ! "$python" -m venv .venv 2>/dev/null; then
    # Debian ships venv support separately.
    rm -rf .venv
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
    "$python" -m venv .venv
  fi
fi

stamp=.venv/.requirements.lock.sha256
wanted=$(sha256sum requirements.lock pyproject.toml | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ] || [ ! -x .venv/bin/ingest ]; then
  .venv/bin/python -m pip install -q --disable-pip-version-check --require-hashes -r requirements.lock
  .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
  echo "$wanted" > "$stamp"
fi
# The project's own modules byte-compiled (pip compiled the locked packages):
# Python reads an up-to-date .pyc even where PYTHONDONTWRITEBYTECODE keeps it
# from writing one, and each process of `ingest run` (the tests start hundreds)
# would otherwise compile them from source, about 0.15 CPU-s a start. Only
# what changed since is compiled again.
.venv/bin/python -m compileall -q ingest load bench tests
echo "setup: .venv ready ($(.venv/bin/ingest --version))"

# node and npm from Debian when missing, then exactly the packages each lock
# file pins: embedded/ (s3rver, which `ingest run` starts by default) and the
# real JavaScript clients of tests/test_js_clients.py (aws-sdk-js-v3, Amplify
# JS), with kinesalite for tests/aws.py (its LevelDB binding, leveldown, loads
# the prebuilt linux-x64 binary it ships: no compiler needed). Amplify needs
# node's built-in fetch (node 18+).
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
fi
if ! node -e 'process.exit(Number(process.versions.node.split(".")[0]) >= 18 ? 0 : 1)'; then
  echo "setup: node $(node --version) is too old: 18 or newer is needed" >&2
  exit 1
fi
embedded_stamp=embedded/node_modules/.package-lock.json.sha256
embedded_wanted=$(sha256sum embedded/package.json embedded/package-lock.json | sha256sum | cut -d' ' -f1)
if [ "$(cat "$embedded_stamp" 2>/dev/null)" != "$embedded_wanted" ]; then
  (cd embedded && timeout 600 npm ci --no-audit --no-fund --loglevel=error)
  echo "$embedded_wanted" > "$embedded_stamp"
fi
echo "setup: embedded/ ready (s3rver for the embedded broker)"
js_stamp=tests/js/node_modules/.package-lock.json.sha256
js_wanted=$(sha256sum tests/js/package.json tests/js/package-lock.json | sha256sum | cut -d' ' -f1)
if [ "$(cat "$js_stamp" 2>/dev/null)" != "$js_wanted" ]; then
  # npm ci starts from an empty node_modules, which also drops the old stamp.
  (cd tests/js && timeout 600 npm ci --no-audit --no-fund --loglevel=error)
  echo "$js_wanted" > "$js_stamp"
fi
echo "setup: tests/js ready (node $(node --version))"

