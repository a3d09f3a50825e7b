#!/bin/sh
# Headless Chromium for the explorer's end-to-end test (tests/client/explorer.test.ts): Debian's
# `chromium` package, installed when /usr/bin/chromium is missing (CI runs as root on Debian).
# Exits non-zero, with the reason, when it cannot be installed.
set -e
CHROMIUM=${CHROMIUM:-/usr/bin/chromium}
if [ -x "$CHROMIUM" ]; then
  echo "install-chromium: $CHROMIUM is installed"
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install-chromium: $CHROMIUM is missing and there is no apt-get to install it (install Debian's chromium package)" >&2
  exit 1
fi
SUDO=
if [ "$(id -u)" != 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo -n"; else
    echo "install-chromium: $CHROMIUM is missing and installing it needs root (apt-get install -y chromium)" >&2
    exit 1
  fi
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends chromium
[ -x "$CHROMIUM" ] || { echo "install-chromium: apt-get ran but $CHROMIUM is still missing" >&2; exit 1; }
echo "install-chromium: installed $CHROMIUM"
