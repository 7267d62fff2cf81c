#!/usr/bin/env bash
# Installs what the tests need and runs them (arguments go to pytest).
# The service tests need PostgreSQL (127.0.0.1:5432, trust auth) and Redis (127.0.0.1:6379):
# they are started here when installed but not running.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/start-services.sh
scripts/install.sh test
exec .venv/bin/python -m pytest "$@"
