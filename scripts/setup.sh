#!/usr/bin/env bash
# Set up MetaScope from a source checkout on a fresh machine.
#   bash scripts/setup.sh        -> the app (.venv with MetaScope and its dependencies)
#   bash scripts/setup.sh dev    -> the app plus test/lint tools
# On Debian/Ubuntu desktops it also installs the few X11 libraries Qt's xcb platform plugin needs
# (skipped for `dev`: tests run offscreen; skipped where apt-get or root/sudo is unavailable).
set -euo pipefail
cd "$(dirname "$0")/.."
extra="${1:-}"

if [ "$extra" != "dev" ] && command -v apt-get >/dev/null 2>&1 && command -v dpkg-query >/dev/null 2>&1; then
  need=()
  for pkg in libxcb-cursor0 libxcb-icccm4 libxcb-keysyms1 libxkbcommon-x11-0 libegl1 libfontconfig1; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
  done
  if [ "${#need[@]}" -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then sudo=""; elif command -v sudo >/dev/null 2>&1; then sudo="sudo"; else sudo="skip"; fi
    if [ "$sudo" = skip ]; then
      echo "note: Qt's window system needs: ${need[*]} (install them with your package manager)" >&2
    else
      $sudo apt-get install -y --no-install-recommends "${need[@]}" >/dev/null || \
        { $sudo apt-get update -qq >/dev/null && $sudo apt-get install -y --no-install-recommends "${need[@]}" >/dev/null; }
    fi
  fi
fi

python3 -m venv .venv
if [ "$extra" = "dev" ]; then
  .venv/bin/pip install -q -e '.[dev]'
else
  .venv/bin/pip install -q -e .
fi
