#!/usr/bin/env bash
# The headless browser tests/test_frontend.py drives: Debian's chromium (/usr/bin/chromium) and the Python package
# playwright (which launches that chromium; `playwright install` is never run). Idempotent: does nothing when both
# are there. Usage: bash tests/install_browser.sh [PYTHON]   (default: python, the one that runs pytest)
set -euo pipefail
python="${1:-python}"
if [ ! -x /usr/bin/chromium ]; then
  sudo=""
  if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
fi
if ! "$python" -c "import playwright.sync_api" 2>/dev/null; then
  "$python" -m pip install -q --disable-pip-version-check playwright
fi
/usr/bin/chromium --version 2>/dev/null
"$python" -c "import importlib.metadata as m; print('playwright', m.version('playwright'))"
