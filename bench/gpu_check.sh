#!/usr/bin/env bash
# The GPU check in one command on a bare GPU machine (no network): install the carried wheels (bench/wheels/*.whl,
# made here by `python bench/gpu_check.py --fetch-wheels`) into a private folder, then run bench/gpu_check.py
# (default --size real; any arguments are passed on). Output: the table, and gpu_check.json/.txt in --out or $OUT.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if compgen -G "bench/wheels/*.whl" >/dev/null; then
  site="${TMPDIR:-/tmp}/vpe_gpu_check_site"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" \
    bench/wheels/*.whl
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
exec "$PY" bench/gpu_check.py --size real "$@"
