#!/usr/bin/env bash
# Re-resolve requirements.lock from pyproject.toml (after changing a dependency),
# then requirements-runtime.lock: the runtime dependencies alone, for the
# container image, held to the versions requirements.lock pins (so the image
# runs what the tests ran).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh >/dev/null
.venv/bin/pip install -q 'uv==0.13.9'
.venv/bin/uv pip compile pyproject.toml --extra dev --generate-hashes \
  --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
  --custom-compile-command "scripts/lock.sh" -o requirements.lock
.venv/bin/uv pip compile pyproject.toml --constraint requirements.lock --generate-hashes \
  --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
  --custom-compile-command "scripts/lock.sh" -o requirements-runtime.lock
