# Shared by scripts/test.sh and scripts/run.sh (sourced, not executed).
# Idempotent: apt runs only when a package is missing, pip only when pyproject.toml changed.

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$REPO/.venv"
PYTHON="${PYTHON:-python3}"

log() { printf '[setup] %s\n' "$*" >&2; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# Debian packages from the arguments that are not installed yet.
missing_debs() {
  local pkg
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || echo "$pkg"
  done
}

apt_install() {
  local missing
  missing="$(missing_debs "$@" | tr '\n' ' ')"
  [ -z "${missing// /}" ] && return 0
  if ! command -v apt-get >/dev/null; then
    log "missing system packages ($missing) and no apt-get: install them by hand"
    return 1
  fi
  log "apt-get install $missing"
  as_root apt-get update -qq
  # shellcheck disable=SC2086  # word splitting of the package list is intended
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    $missing >/dev/null
}

# Only used when pip has to build something from source: a platform without wheels for
# pylibsrtp/pyzmq/cryptography etc. (PyAV 18 itself needs FFmpeg >= 7, newer than Debian 12's,
# so it must come as a wheel: x86_64 and aarch64 manylinux wheels exist.)
BUILD_DEBS=(pkg-config libffi-dev libssl-dev libsrtp2-dev libopus-dev libvpx-dev libzmq3-dev)

check_python() {
  if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    log "$PYTHON is missing or older than 3.11"
    return 1
  fi
}

# Creates .venv (again if it is broken) and installs the project with the given extras.
ensure_venv() {
  local extras="$1" spec="." stamp hash
  [ -n "$extras" ] && spec=".[$extras]"
  if ! "$VENV/bin/python" -c '' 2>/dev/null; then
    log "creating $VENV"
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV"
  fi
  hash="$( (cat "$REPO/pyproject.toml"; "$VENV/bin/python" -V) | sha256sum | cut -d' ' -f1)"
  stamp="$VENV/.installed-${extras:-runtime}"
  # A test install also satisfies a runtime-only request.
  if [ "$(cat "$stamp" 2>/dev/null)" = "$hash" ] ||
     { [ -z "$extras" ] && [ "$(cat "$VENV/.installed-test" 2>/dev/null)" = "$hash" ]; }; then
    return 0
  fi
  log "pip install -e '$spec'"
  if ! (cd "$REPO" && "$VENV/bin/python" -m pip install -q -e "$spec"); then
    log "pip install failed; installing build dependencies and retrying"
    apt_install "${BUILD_DEBS[@]}"
    (cd "$REPO" && "$VENV/bin/python" -m pip install -q -e "$spec")
  fi
  echo "$hash" >"$stamp"
}
