#!/usr/bin/env bash
# Install everything the test suite needs, then run it. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")"
if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  # The real-browser test drives Debian's Chromium; playwright's own browser download is not used.
  apt-get install -y -q chromium >/dev/null || (apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null)
fi
python -m pip install -q -r requirements-dev.txt -e .
export HF_HUB_OFFLINE=1
python -m pytest -q "$@"
