#!/usr/bin/env bash
# Memory and race checks of the RoI pooling kernels (and, with --cpu, of the image-patches
# kernel). Any out-of-bounds access, use of freed memory or data race fails the run with the
# sanitizer's report.
#
# Usage (from the repository root, after `make build`):
#   bash experiments/sanitize_roi_pool.sh [MODE ...]        default: --cpu --emulated
# Modes:
#   --cpu        the CPU extensions and the CUDA emulation module built with AddressSanitizer,
#                under the RoI pooling tests (adversarial RoIs, NaN/inf, empty maps, K = 0, vmap,
#                backward, dtypes) and tests/xla_ops/test_roi_pool_cuda_emulated.py; the AMX kit's
#                extensions under tests/xla_ops/amx/ (the image patches: window sizes 1-7 on
#                images down to 1x1, both layouts and dtypes, the convolutions and their
#                gradients; the tile kernel on every shape of its tests, through the tile
#                emulation where the CPU has no AMX, so on every machine)
#   --roi-align  RoIAlign alone: the CPU extension and the CUDA emulation module built with
#                AddressSanitizer, under tests/xla_ops/test_roi_align.py (adversarial, huge and
#                invalid RoIs, empty maps, dtypes, vmap, scan, gradients) and
#                tests/xla_ops/test_roi_align_cuda_emulated.py (--cpu runs it too)
#   --emulated   the CUDA kernels on the CPU (xla_ops/csrc/testing/roi_pool_cuda_check.cu and
#                roi_align_cuda_check.cu against the CUDA runtime emulation): built with
#                AddressSanitizer, then ThreadSanitizer
#   --gpu        the same program built by nvcc for the GPU found, under compute-sanitizer
#                --tool memcheck and --tool racecheck (skipped, with a message, without the tool)
#   --plant-off-by-one  proves the harness: the forward reads one row past each bin (y <= end);
#                AddressSanitizer must report it. Exits 0 only if it did.
#   --plant-tile-overread  proves the harness for the AMX products (xla_ops/amx/csrc/bf16_dot_cpu.cc):
#                tiles crossing a's last row are read in place, past the end of a;
#                AddressSanitizer must report it (through the tile emulation). Exits 0 only if it did.
#   --plant-roi-align-overread  proves the harness for RoIAlign: a sample in the last row's band
#                gets a neighbour one row past the map (roi_align_bins.h's clamp at size - 1
#                moved to size); AddressSanitizer must report it. Exits 0 only if it did.
#   --plant-race        proves the harness: the deterministic backward loses the barrier between
#                writing the compacted RoI list to shared memory and reading it; ThreadSanitizer
#                must report it. Exits 0 only if it did.
# Environment: PY (default .venv/bin/python), OUT (a folder for logs; default a temporary one).
set -euo pipefail
PY=${PY:-.venv/bin/python}
repo=$(pwd)
work=$(mktemp -d)
OUT=${OUT:-$work}
mkdir -p "$OUT"
FFI_INCLUDE=$("$PY" -c "import jax.ffi; print(jax.ffi.include_dir())")
CHECK_SOURCE=xla_ops/csrc/testing/roi_pool_cuda_check.cu
ALIGN_CHECK_SOURCE=xla_ops/csrc/testing/roi_align_cuda_check.cu
CXX=${CXX:-g++}

# build_check SANITIZER BINARY [extra include dir first]: the check program as host C++.
build_check() {
  local sanitizer=$1 binary=$2 first=${3:-} source=${4:-$CHECK_SOURCE}
  "$CXX" -std=c++20 -x c++ -O1 -g -fno-omit-frame-pointer -fsanitize="$sanitizer" -ffp-contract=off \
    -pthread ${first:+-I"$first"} -Ixla_ops/csrc/testing -Ixla_ops/csrc -I"$FFI_INCLUDE" \
    "$source" -o "$binary" 2>"$binary.build.log" \
    || { cat "$binary.build.log" >&2; return 1; }
}

# sanitized_build LIB [TREE]: the CPU extensions and the CUDA emulation module built with
# AddressSanitizer into LIB, from the sources under TREE (default: this checkout).
sanitized_build() {
  local lib=$1 tree=${2:-$repo}
  mkdir -p "$lib/xla_ops/amx"
  cp "$tree"/xla_ops/*.py "$lib/xla_ops/"
  cp "$tree"/xla_ops/amx/*.py "$lib/xla_ops/amx/"
  (cd "$tree" && JAXDET_SANITIZE=address JAXDET_CUDA=0 JAXDET_CUDA_EMULATION=1 JAXDET_AMX_EMULATION=1 \
    "$repo/$PY" setup.py -q build_ext --build-lib "$lib" --build-temp "$lib/tmp" >/dev/null 2>&1)
}

# under_asan LIB ARGS...: python ARGS with AddressSanitizer loaded, importing xla_ops from LIB
# (checked first).
under_asan() {
  local lib=$1
  shift
  local modules=${ASAN_MODULES:-xla_ops._roi_pool_cpu xla_ops._roi_pool_cuda_emulated xla_ops.amx._patches_cpu xla_ops.amx._bf16_dot_cpu xla_ops.amx._bf16_dot_emulated}
  (
    # libstdc++ preloaded too, or ASan's __cxa_throw interceptor fails inside jaxlib.
    export LD_PRELOAD="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libstdc++.so)"
    export ASAN_OPTIONS=detect_leaks=0:halt_on_error=1:detect_stack_use_after_return=0:handle_abort=1:handle_segv=0
    export JAX_PLATFORMS=cpu  # no plugin probing under the sanitizer
    # Run from the scratch directory so that `import xla_ops` finds the sanitized build.
    cd "$lib"
    PYTHONPATH="$lib" "$repo/$PY" -c "
import importlib, sys
sys.exit(not all(importlib.import_module(m).__file__.startswith('$lib') for m in '$modules'.split()))" \
      || { echo "the sanitized extensions were not the ones imported" >&2; exit 1; }
    PYTHONPATH="$lib" "$repo/$PY" "$@"
  )
}

run_cpu() {
  echo "== CPU extensions and CUDA emulation module, AddressSanitizer, under pytest"
  local lib=$work/lib
  sanitized_build "$lib"
  # --capture=sys: a sanitizer report goes to file descriptor 2 as the process aborts; pytest must
  # not be holding that descriptor.
  local pytest=(-m pytest -q -p no:cacheprovider --capture=sys --rootdir "$repo/tests")
  under_asan "$lib" "${pytest[@]}" "$repo/tests/xla_ops/test_roi_pool.py" "$repo/tests/xla_ops/test_roi_pool_cuda_emulated.py" \
    -k "adversarial or empty or nan or native_gradient or vmap or dtypes or emulated or launch or threads"
  under_asan "$lib" "${pytest[@]}" "$repo/tests/xla_ops/amx/test_amx_layers.py" "$repo/tests/xla_ops/amx/test_amx_products.py"
  run_roi_align "$lib"
}

# RoIAlign's tests under AddressSanitizer ($1: a sanitized build, made here when not given).
# tests/ is on the path for their numpy reference (tests/references/); they need no conftest.
ROI_ALIGN_MODULES="xla_ops._roi_align_cpu xla_ops._roi_align_cuda_emulated"
run_roi_align() {
  local lib=${1:-}
  echo "== RoIAlign: CPU extension and CUDA emulation module, AddressSanitizer, under pytest"
  if [ -z "$lib" ]; then
    lib=$work/lib_roi_align
    sanitized_build "$lib"
  fi
  ASAN_MODULES=$ROI_ALIGN_MODULES under_asan "$lib" -m pytest -q -p no:cacheprovider --capture=sys --noconftest \
    --rootdir "$repo/tests" -o pythonpath="$repo/tests" "$repo/tests/xla_ops/test_roi_align.py" \
    "$repo/tests/xla_ops/test_roi_align_cuda_emulated.py" -k "not shard_map"
}

# A sample in [H - 1, H) clamps both neighbours to row H - 1; planted, the clamp starts at H, so
# its high neighbour is row H, past the map: past the features' buffer for the last image,
# which the emulated tests' bottom-right RoIs of image N - 1 sample.
plant_roi_align_overread() {
  local tree=$work/planted_roi_align lib=$work/planted_roi_align_lib
  mkdir -p "$tree/xla_ops"
  cp setup.py pyproject.toml "$tree/"
  cp -r xla_ops/*.py xla_ops/csrc "$tree/xla_ops/"
  local source=$tree/xla_ops/csrc/roi_align_bins.h
  perl -pi -e 's/if \(low >= size - 1\) \{/if (low >= size) {/' "$source"
  if cmp -s xla_ops/csrc/roi_align_bins.h "$source"; then
    echo "plant roi-align-overread: the line to change is not in roi_align_bins.h" >&2
    return 1
  fi
  echo "== planted bug (roi-align-overread): roi_align_bins.h with"
  diff xla_ops/csrc/roi_align_bins.h "$source" || true
  sanitized_build "$lib" "$tree"
  ASAN_MODULES=$ROI_ALIGN_MODULES expect_report roi-align-overread address under_asan "$lib" -m pytest -q \
    -p no:cacheprovider --capture=sys --noconftest --rootdir "$repo/tests" -o pythonpath="$repo/tests" \
    "$repo/tests/xla_ops/test_roi_align_cuda_emulated.py" -k "float32 and output_size0"
}

# The AMX products' tiles read a in place where they lie inside it: planted, every tile that
# starts inside a is read in place, so those crossing a's last row read past its end. AddressSanitizer sees the
# tile instructions only through the kernel's touches (CheckRows), the emulation's own reads
# directly: it must report this, on the emulated tiles (any CPU).
plant_tile_overread() {
  local tree=$work/planted_tile_overread lib=$work/planted_tile_overread_lib
  mkdir -p "$tree/xla_ops"
  cp setup.py pyproject.toml "$tree/"
  cp -r xla_ops/*.py xla_ops/csrc xla_ops/amx "$tree/xla_ops/"
  local source=$tree/xla_ops/amx/csrc/bf16_dot_cpu.cc
  perl -pi -e 's/row \+ kTileRows <= d\.m && k \+ kTileK <= d\.k/row < d.m \&\& k < d.k/' "$source"
  if cmp -s xla_ops/amx/csrc/bf16_dot_cpu.cc "$source"; then
    echo "plant tile-overread: the line to change is not in bf16_dot_cpu.cc" >&2
    return 1
  fi
  echo "== planted bug (tile-overread): bf16_dot_cpu.cc with"
  diff xla_ops/amx/csrc/bf16_dot_cpu.cc "$source" || true
  sanitized_build "$lib" "$tree"
  expect_report tile-overread address under_asan "$lib" -m pytest -q -p no:cacheprovider --capture=sys \
    --rootdir "$repo/tests" \
    "$repo/tests/xla_ops/amx/test_amx_products.py::test_products_of_small_integers_are_exact[emulated-17-33-15-b]"
}

run_emulated() {
  for sanitizer in address thread; do
    echo "== CUDA kernels on the CPU (emulated), ${sanitizer} sanitizer"
    build_check "$sanitizer" "$work/check_$sanitizer"
    TSAN_OPTIONS=halt_on_error=1 ASAN_OPTIONS=detect_leaks=1:halt_on_error=1 \
      "$work/check_$sanitizer" 2>&1 | tee "$OUT/emulated_$sanitizer.log"
    echo "== RoIAlign's CUDA kernels on the CPU (emulated), ${sanitizer} sanitizer"
    build_check "$sanitizer" "$work/align_check_$sanitizer" "" "$ALIGN_CHECK_SOURCE"
    TSAN_OPTIONS=halt_on_error=1 ASAN_OPTIONS=detect_leaks=1:halt_on_error=1 \
      "$work/align_check_$sanitizer" 2>&1 | tee "$OUT/emulated_align_$sanitizer.log"
  done
}

run_gpu() {
  local arch sanitizer
  if ! command -v nvidia-smi >/dev/null || ! nvidia-smi -L >/dev/null 2>&1; then
    echo "--gpu: no NVIDIA GPU found (nvidia-smi)" >&2
    return 1
  fi
  arch=${JAXDET_CUDA_ARCHS:-$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -n1 | tr -d .)}
  arch=${arch%%;*}
  local nvcc=${CUDA_HOME:-/usr/local/cuda}/bin/nvcc
  command -v nvcc >/dev/null && nvcc=$(command -v nvcc)
  gpu_check_program "$CHECK_SOURCE" "" && gpu_check_program "$ALIGN_CHECK_SOURCE" align_
}

# gpu_check_program SOURCE PREFIX: the check program SOURCE built by nvcc ($nvcc, $arch of
# run_gpu) and run as is, then under compute-sanitizer; logs $OUT/gpu_PREFIX*.log.
gpu_check_program() {
  local source=$1 prefix=$2 sanitizer
  echo "== CUDA kernels of $source on the GPU (sm_$arch), compute-sanitizer"
  "$nvcc" -std=c++17 --fmad=false -O2 -lineinfo -gencode "arch=compute_$arch,code=sm_$arch" \
    -Ixla_ops/csrc -I"$FFI_INCLUDE" "$source" -o "$work/${prefix}check_gpu"
  "$work/${prefix}check_gpu" | tee "$OUT/gpu_${prefix}check.log"
  local tool
  tool=$(command -v compute-sanitizer || echo "$(dirname "$nvcc")/compute-sanitizer")
  if [ ! -x "$tool" ]; then
    echo "compute-sanitizer not found: memcheck and racecheck skipped" | tee -a "$OUT/gpu_${prefix}check.log"
    return 0
  fi
  for sanitizer in memcheck racecheck; do
    if ! "$tool" --tool "$sanitizer" --error-exitcode 1 "$work/${prefix}check_gpu" >"$OUT/gpu_${prefix}$sanitizer.log" 2>&1; then
      if grep -q "ERROR SUMMARY: [1-9]\|FAILED" "$OUT/gpu_${prefix}$sanitizer.log"; then
        cat "$OUT/gpu_${prefix}$sanitizer.log" >&2
        return 1
      fi
      echo "compute-sanitizer --tool $sanitizer refused the device: skipped" | tee -a "$OUT/gpu_${prefix}check.log"
      tail -n 5 "$OUT/gpu_${prefix}$sanitizer.log"
      continue
    fi
    tail -n 2 "$OUT/gpu_${prefix}$sanitizer.log"
  done
}

# plant NAME SANITIZER FROM TO: builds the check program against a copy of roi_pool_cuda.cu with
# one line changed and expects the sanitizer to report it.
plant() {
  local name=$1 sanitizer=$2 from=$3 to=$4 planted=$work/planted_$1
  mkdir -p "$planted"
  cp xla_ops/csrc/roi_pool_cuda.cu "$planted/"
  FROM=$from TO=$to perl -0pi -e 's/\Q$ENV{FROM}\E/$ENV{TO}/' "$planted/roi_pool_cuda.cu"
  if cmp -s xla_ops/csrc/roi_pool_cuda.cu "$planted/roi_pool_cuda.cu"; then
    echo "plant $name: the line to change is not in roi_pool_cuda.cu" >&2
    return 1
  fi
  echo "== planted bug ($name): roi_pool_cuda.cu with"
  diff xla_ops/csrc/roi_pool_cuda.cu "$planted/roi_pool_cuda.cu" || true
  build_check "$sanitizer" "$work/check_$name" "$planted"
  expect_report "$name" "$sanitizer" env TSAN_OPTIONS=halt_on_error=1 ASAN_OPTIONS=halt_on_error=1 "$work/check_$name"
}

# expect_report NAME SANITIZER COMMAND...: runs COMMAND (output in $OUT/planted_NAME.log), which
# must fail with a report of the sanitizer; prints the report's first lines.
expect_report() {
  local name=$1 sanitizer=$2
  shift 2
  if "$@" >"$OUT/planted_$name.log" 2>&1; then
    echo "planted bug ($name) NOT caught by the $sanitizer sanitizer" >&2
    return 1
  fi
  grep -m1 -A3 "ERROR: AddressSanitizer\|WARNING: ThreadSanitizer" "$OUT/planted_$name.log" | cut -c1-160 || {
    echo "planted bug ($name): the program failed, but not with a sanitizer report:" >&2
    tail -n 20 "$OUT/planted_$name.log" >&2
    return 1
  }
  echo "planted bug ($name) caught by the $sanitizer sanitizer"
}

modes=("$@")
[ ${#modes[@]} -gt 0 ] || modes=(--cpu --emulated)
for mode in "${modes[@]}"; do
  case $mode in
    --cpu) run_cpu ;;
    --emulated) run_emulated ;;
    --roi-align) run_roi_align ;;
    --plant-roi-align-overread) plant_roi_align_overread ;;
    --gpu) run_gpu ;;
    --plant-off-by-one)
      plant off-by-one address "for (int64_t y = rows.begin; y < rows.end; ++y)" \
        "for (int64_t y = rows.begin; y <= rows.end; ++y)" ;;
    --plant-tile-overread) plant_tile_overread ;;
    --plant-race)
      plant race thread $'static_cast<int32_t>(k);\n      __syncthreads();' 'static_cast<int32_t>(k);' ;;
    *) echo "unknown mode $mode (see the header of $0)" >&2; exit 2 ;;
  esac
done
echo "sanitize_roi_pool ${modes[*]}: done"
