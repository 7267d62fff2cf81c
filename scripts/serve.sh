#!/usr/bin/env bash
# Installs XAL and runs it: API, UI and a worker. With no XAL_* variables set it uses the
# embedded default (SQLite and a filesystem broker under ./xal-data), no servers needed.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh
exec .venv/bin/xal serve "$@"
