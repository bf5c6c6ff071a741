#!/usr/bin/env bash
# Copy the console's chart library (uPlot, pinned by console/package-lock.json)
# into the package, where it is committed and shipped in the wheel with its
# licence: nothing is built or fetched when ingest is installed. Run after
# changing the version in console/package.json.
set -euo pipefail
cd "$(dirname "$0")/.."
(cd console && npm ci --no-audit --no-fund --loglevel=error)
vendor=ingest/console/vendor
mkdir -p "$vendor"
cp console/node_modules/uplot/dist/uPlot.esm.js "$vendor/uPlot.esm.js"
cp console/node_modules/uplot/dist/uPlot.min.css "$vendor/uPlot.min.css"
cp console/node_modules/uplot/LICENSE "$vendor/uPlot.LICENSE"
echo "vendored uPlot $(node -p 'require("./console/node_modules/uplot/package.json").version') into $vendor"
