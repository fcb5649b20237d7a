#!/usr/bin/env bash
# Install live-sfu from this checkout as systemd services on a Debian 12 host (run as root):
#   * the system user and group live-sfu;
#   * /opt/live-sfu/.venv, a virtual environment with live-sfu installed (not editable);
#   * /etc/live-sfu/env and /etc/live-sfu/worker.env, commented templates (EnvironmentFile=),
#     written only when absent: an operator's settings are never overwritten;
#   * /etc/live-sfu/credentials/, root-only, for the secrets the units load with
#     LoadCredential= (auth_token, jwt_secret, admin_token, worker_token, ...);
#   * systemd/sfu-gateway.service and sfu-worker@.service in /etc/systemd/system, and
#     sfu-gateway.service enabled (not started: configure it first, then start it).
# Safe to run again, e.g. after `git pull`: it upgrades the venv and the units, keeps the rest.
#
# Options:
#   --dry-run      print what would be done, change nothing
#   --prefix DIR   install into DIR as if it were / (staging, packaging, tests): no user,
#                  no chown, no apt-get, no systemctl
#   --skip-venv    leave /opt/live-sfu/.venv alone (e.g. tests; a venv managed otherwise)
#   --no-enable    do not enable sfu-gateway.service
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SERVICE_USER=live-sfu
APP_DIR=/opt/live-sfu
ETC_DIR=/etc/live-sfu
UNIT_DIR=/etc/systemd/system
PYTHON="${PYTHON:-python3}"
DEBS=(python3 python3-venv)

prefix="" dry_run=0 skip_venv=0 enable=1
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) dry_run=1 ;;
    --prefix) prefix="${2:?--prefix needs a directory}"; shift ;;
    --prefix=*) prefix="${1#--prefix=}" ;;
    --skip-venv) skip_venv=1 ;;
    --no-enable) enable=0 ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) printf 'install.sh: unknown option %s (see --help)\n' "$1" >&2; exit 2 ;;
  esac
  shift
done
if [ -n "$prefix" ]; then
  mkdir -p "$prefix"
  prefix="$(cd "$prefix" && pwd)"
fi
system=1  # a real install: user, ownership, apt-get, systemctl
[ -n "$prefix" ] && system=0

log() { printf '[install] %s\n' "$*" >&2; }
run() {
  if [ "$dry_run" -eq 1 ]; then
    printf '+'; printf ' %q' "$@"; printf '\n'
  else
    "$@"
  fi
}

if [ "$system" -eq 1 ] && [ "$dry_run" -eq 0 ] && [ "$(id -u)" -ne 0 ]; then
  log "run as root (or try --dry-run, or --prefix DIR)"
  exit 1
fi

# --- packages ---------------------------------------------------------------------------
if [ "$system" -eq 1 ]; then
  missing=()
  for deb in "${DEBS[@]}"; do
    dpkg-query -W -f='${Status}' "$deb" 2>/dev/null | grep -q 'install ok installed' ||
      missing+=("$deb")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    run apt-get update -qq
    run env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      "${missing[@]}"
  fi
fi

# --- the system user ----------------------------------------------------------------------
if [ "$system" -eq 1 ]; then
  if getent passwd "$SERVICE_USER" >/dev/null; then
    log "user $SERVICE_USER exists"
  else
    run useradd --system --user-group --home-dir /var/lib/live-sfu --no-create-home \
      --shell /usr/sbin/nologin --comment "live-sfu WebRTC SFU" "$SERVICE_USER"
  fi
fi

# install(1) with root ownership where that is real; plain modes under --prefix.
owned() {  # owned GROUP MODE: the install(1) options
  if [ "$system" -eq 1 ]; then
    printf '%s\n' -o root -g "$1" -m "$2"
  else
    printf '%s\n' -m "$2"
  fi
}
mapfile -t root_755 < <(owned root 0755)
mapfile -t root_700 < <(owned root 0700)
mapfile -t root_644 < <(owned root 0644)
mapfile -t group_640 < <(owned "$SERVICE_USER" 0640)
mapfile -t group_750 < <(owned "$SERVICE_USER" 0750)

# --- directories ----------------------------------------------------------------------------
run install -d "${root_755[@]}" "$prefix$APP_DIR"
run install -d "${group_750[@]}" "$prefix$ETC_DIR"
# LoadCredential= reads these as root, before dropping to the service user: keep them root's.
run install -d "${root_700[@]}" "$prefix$ETC_DIR/credentials"
run install -d "${root_755[@]}" "$prefix$UNIT_DIR"

# --- the virtual environment ------------------------------------------------------------------
venv="$prefix$APP_DIR/.venv"
if [ "$skip_venv" -eq 0 ]; then
  if ! "$venv/bin/python" -c '' 2>/dev/null; then
    run "$PYTHON" -m venv "$venv"
  fi
  # Not editable: the service must not depend on this checkout staying where it is.
  run "$venv/bin/python" -m pip install --quiet --upgrade "$REPO"
fi

# --- configuration templates (only when absent) -----------------------------------------------
write_template() {  # write_template PATH: stdin becomes PATH unless PATH exists
  local path="$1" tmp
  if [ -e "$path" ]; then
    log "$path exists: kept"
    cat >/dev/null
    return 0
  fi
  if [ "$dry_run" -eq 1 ]; then
    printf '+ write %q\n' "$path"
    cat >/dev/null
    return 0
  fi
  tmp="$(mktemp)"
  cat >"$tmp"
  install "${group_640[@]}" "$tmp" "$path"
  rm -f "$tmp"
}

write_template "$prefix$ETC_DIR/env" <<'EOF'
# sfu-gateway settings, one VAR=value per line (sfu-gateway --help lists every one).
# Secrets do not belong here: put each in /etc/live-sfu/credentials/NAME (root, 0600),
# e.g. /etc/live-sfu/credentials/auth_token; the unit reads them with LoadCredential=.
# Setting a secret here as well (AUTH_TOKEN=...) is an error: the gateway exits with code 2.
#HTTP_ADDR=:8080
#WORKERS=auto
#UDP_PORTS=40000-40999
#PUBLIC_IP=
#STUN_URLS=stun:stun.l.google.com:19302
#TURN_URLS=
#ALLOWED_ORIGIN=*
#WORKER_LISTEN=tcp://0.0.0.0:7700
#RECORD_ENABLED=0
#LOG_LEVEL=info
EOF

write_template "$prefix$ETC_DIR/worker.env" <<'EOF'
# sfu-worker@N settings for a media-only host (sfu-worker --help lists every one).
# The gateway's WORKER_TOKEN, when it requires one: /etc/live-sfu/credentials/worker_token.
# Required: the gateway's WORKER_LISTEN endpoint.
#SFU_CONNECT=tcp://gateway-host:7700
#UDP_PORTS=40000-40999
#PUBLIC_IP=
#LOG_LEVEL=info
EOF

# --- the units --------------------------------------------------------------------------------
changed=0
for unit in sfu-gateway.service sfu-worker@.service; do
  if ! cmp -s "$REPO/systemd/$unit" "$prefix$UNIT_DIR/$unit"; then
    run install "${root_644[@]}" "$REPO/systemd/$unit" "$prefix$UNIT_DIR/$unit"
    changed=1
  fi
done

if [ "$system" -eq 1 ]; then
  if [ "$changed" -eq 1 ]; then
    run systemctl daemon-reload
  fi
  if [ "$enable" -eq 1 ]; then
    run systemctl enable sfu-gateway.service
  fi
  log "next: edit $ETC_DIR/env, put secrets in $ETC_DIR/credentials/, then"
  log "      systemctl restart sfu-gateway  (a running gateway keeps its old code until then)"
else
  log "installed under $prefix (no user, ownership or systemctl under --prefix)"
fi
