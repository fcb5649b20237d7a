#!/usr/bin/env bash
# Run a load scenario on a fresh checkout: set up .venv (as scripts/test.sh does), then
#   bench/run.sh p1 [--viewers 10,50,100,200 ...]     (see bench/README.md)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/_setup.sh"
apt_install python3-venv python3-dev gcc
check_python
ensure_venv test
cd "$REPO"
exec "$VENV/bin/python" -m bench.load "$@"
