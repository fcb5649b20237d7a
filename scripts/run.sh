#!/usr/bin/env bash
# Start the gateway (and its local workers) from a checkout: sets up .venv like
# scripts/test.sh, without the test tools or the browser. Arguments go to sfu-gateway.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"

apt_install python3-venv
check_python
ensure_venv ""
exec "$VENV/bin/sfu-gateway" "$@"
