#!/usr/bin/env bash
# Builds the CPU extension with AddressSanitizer into a scratch directory and runs the RoI
# pooling tests against it (adversarial RoIs, NaN/inf, empty maps, K = 0, vmap, backward).
# Any out-of-bounds read or write aborts the run with an ASan report.
# Usage: bash experiments/sanitize_roi_pool.sh   (from the repository root, after `make build`)
set -euo pipefail
PY=${PY:-.venv/bin/python}
out=$(mktemp -d)
mkdir -p "$out/xla_ops"
cp xla_ops/*.py "$out/xla_ops/"
JAXDET_SANITIZE=address JAXDET_CUDA=0 "$PY" setup.py -q build_ext --build-lib "$out" --build-temp "$out/tmp" >/dev/null
# libstdc++ preloaded too, or ASan's __cxa_throw interceptor fails inside jaxlib.
export LD_PRELOAD="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libstdc++.so)"
export ASAN_OPTIONS=detect_leaks=0:halt_on_error=1:detect_stack_use_after_return=0:handle_abort=1:handle_segv=0
export JAX_PLATFORMS=cpu  # no plugin probing under the sanitizer
# Run from the scratch directory so that `import xla_ops` finds the sanitized build.
repo=$(pwd)
cd "$out"
PYTHONPATH="$out" "$repo/$PY" -c "import sys, xla_ops._roi_pool_cpu as m; sys.exit(not m.__file__.startswith('$out'))" \
  || { echo "the sanitized extension was not the one imported" >&2; exit 1; }
PYTHONPATH="$out" "$repo/$PY" -m pytest -q -p no:cacheprovider "$repo/tests/test_roi_pool.py" \
  -k "adversarial or empty or nan or native_gradient or vmap or dtypes" "$@"
