#!/usr/bin/env bash
# Install (or upgrade) chunkd as a systemd service on this host, from this checkout. Run as root:
#   deploy/install.sh            install: user, venv, folders, config, unit; starts nothing
#   deploy/install.sh --enable   ... then `systemctl enable --now chunkd` (restarts it if running)
# Safe to run again: an existing user and /etc/chunkd/chunkd.env are kept; folder modes are reset.
# The paths match deploy/chunkd.service; change both together.
set -euo pipefail
# The venv must be readable by the service user whatever root's umask is.
umask 022

readonly USER_NAME=chunkd
readonly VENV=/opt/chunkd/venv
readonly INPUT_DIR=/srv/chunkd/input
readonly DONE_DIR=/srv/chunkd/done
readonly STATE_DIR=/var/lib/chunkd
readonly ENV_FILE=/etc/chunkd/chunkd.env
readonly UNIT_FILE=/etc/systemd/system/chunkd.service

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
readonly repo
python=${PYTHON:-python3}

usage() {
  sed -n '2,6s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
}

die() {
  echo "install.sh: $*" >&2
  exit 1
}

enable=0
for arg in "$@"; do
  case "$arg" in
    --enable) enable=1 ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; exit 2 ;;
  esac
done

[ "$(id -u)" -eq 0 ] || die "run as root (it creates a system user and installs a systemd unit)"
command -v systemctl >/dev/null 2>&1 || die "systemctl not found: this installs a systemd service"
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null \
  || die "$python is missing or older than 3.11 (set PYTHON=/path/to/python3.11+)"

# 1. A system user with no login; its home is the state folder.
if ! getent group "$USER_NAME" >/dev/null; then
  groupadd --system "$USER_NAME"
fi
if ! id -u "$USER_NAME" >/dev/null 2>&1; then
  useradd --system --gid "$USER_NAME" --home-dir "$STATE_DIR" --no-create-home \
    --shell /usr/sbin/nologin --comment "chunkd uploader" "$USER_NAME"
fi

# 2. The venv, with chunkd from a copy of the sources: the build leaves no root-owned files in the checkout.
if [ ! -x "$VENV/bin/python" ]; then
  install -d -m 0755 "$(dirname "$VENV")"
  "$python" -m venv "$VENV"
fi
build=$(mktemp -d)
trap 'rm -rf "$build"' EXIT
cp -r "$repo/pyproject.toml" "$repo/README.md" "$repo/chunkd" "$build/"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet --upgrade "$build"

# 3. Folders. The drop folders are setgid group chunkd: add recorders to that group to let them drop files.
install -d -m 0755 "$(dirname "$INPUT_DIR")"
install -d -m 2775 -o "$USER_NAME" -g "$USER_NAME" "$INPUT_DIR" "$DONE_DIR"
install -d -m 0750 -o "$USER_NAME" -g "$USER_NAME" "$STATE_DIR"

# 4. Settings: copied once, never overwritten; root-only, since it holds credentials (systemd reads it as root).
install -d -m 0755 "$(dirname "$ENV_FILE")"
if [ ! -e "$ENV_FILE" ]; then
  install -m 0600 -o root -g root "$repo/deploy/chunkd.env.example" "$ENV_FILE"
  echo "install.sh: wrote $ENV_FILE from deploy/chunkd.env.example: edit the endpoint, bucket and credentials"
fi

# 5. The unit.
install -m 0644 "$repo/deploy/chunkd.service" "$UNIT_FILE"
systemctl daemon-reload

command -v ffprobe >/dev/null 2>&1 \
  || echo "install.sh: warning: ffprobe not found (apt-get install ffmpeg): manifests will have media: null" >&2

if [ "$enable" -eq 1 ]; then
  if systemctl is-active --quiet chunkd; then
    systemctl restart chunkd # a warm stop: in-flight parts finish first
  fi
  systemctl enable --now chunkd
  systemctl --no-pager --lines=0 status chunkd || true
else
  echo "install.sh: installed; start with: systemctl enable --now chunkd"
fi
