#!/usr/bin/env bash
# Installs what the tests need (the project, its test extras, Chromium), runs the lint, format
# and type checks (ruff, mypy), then the tests (arguments go to pytest).
# The service tests need PostgreSQL (127.0.0.1:5432, trust auth) and Redis (127.0.0.1:6379):
# they are started here when installed but not running.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/start-services.sh
# browser tests drive Debian's Chromium (Playwright's own browser download does not work here)
if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null; then
  apt-get update -q && apt-get install -y -q chromium
fi
scripts/install.sh test
# lint, format and types first: any finding stops here (set -e)
.venv/bin/ruff check backend worker tests bench migrations
.venv/bin/ruff format --check backend worker tests bench migrations
.venv/bin/mypy backend/core backend/services worker/ml
exec .venv/bin/python -m pytest "$@"
