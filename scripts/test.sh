#!/usr/bin/env bash
# The one command for CI and for a fresh Debian 12 machine: install what is missing, then run
# ruff, mypy and pytest. Exits non-zero if any of them fails (pytest "no tests" included).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"

# gcc/python3-dev: fallback builds when a wheel is missing; chromium: tests/browser.
apt_install python3-venv python3-dev gcc chromium
# GStreamer webrtcbin WHIP publisher (tests/clients/gst_whip.py, run by /usr/bin/python3).
apt_install python3-gi gir1.2-gstreamer-1.0 gir1.2-gst-plugins-base-1.0 \
  gir1.2-gst-plugins-bad-1.0 gstreamer1.0-plugins-base gstreamer1.0-plugins-good \
  gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly gstreamer1.0-nice
# promtool, for tests/ops/test_dashboards.py (ops/prometheus/alerts.yml); Debian ships it only
# in the prometheus package, whose own server service is not needed.
apt_install prometheus
# iptables (nft): the NAT router and firewalls of tests/network (testkit/netns.py).
apt_install iptables
# Several nodes sharing a room directory: tests/cluster start their own redis-server.
apt_install redis-server
check_python
ensure_venv test

cd "$REPO"
failed=()
step() {
  printf '\n== %s\n' "$*"
  "$@" || failed+=("$*")
}
step "$VENV/bin/ruff" check .
step "$VENV/bin/mypy"
# pytest exits 5 when it collected nothing; that is non-zero, so it counts as a failure here.
# `python -m pytest` puts the checkout on sys.path, so tests can import tests.* helpers.
step "$VENV/bin/python" -m pytest -q "$@"

if [ "${#failed[@]}" -ne 0 ]; then
  printf '\nFAILED: %s\n' "${failed[@]}" >&2
  exit 1
fi
printf '\nall checks passed\n' >&2
