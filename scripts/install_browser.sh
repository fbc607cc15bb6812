#!/usr/bin/env bash
# Headless Chromium for the kedro-viz browser test (tests/test_viz_browser.py).
# Installs the Debian/Ubuntu package `chromium` when no Chromium is on PATH;
# needs root or sudo for apt-get. Elsewhere, install Chromium or Chrome by hand
# (or point $CHROMIUM at it): the test finds it on PATH.
set -euo pipefail

for name in chromium chromium-browser google-chrome google-chrome-stable; do
  if command -v "$name" >/dev/null 2>&1; then
    echo "chromium: found $(command -v "$name")"
    exit 0
  fi
done

if ! command -v apt-get >/dev/null 2>&1; then
  echo "chromium: not found and no apt-get here; install Chromium by hand" >&2
  exit 1
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends chromium >/dev/null
echo "chromium: installed $(command -v chromium)"
