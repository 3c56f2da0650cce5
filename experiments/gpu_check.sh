#!/usr/bin/env bash
# `make gpu-check`: proves and measures jaxdet on a machine with an NVIDIA GPU, offline, in at
# most 8 minutes of wall time, every log and figure in one folder (README, "Checking a GPU
# machine"). Without a GPU it says so in one line and exits 1 at once.
#
# Steps, each under a time limit (its own, and never past the whole run's budget); a step that
# fails or runs out of time is recorded and the next one runs; the exit status is 1 when any
# step did not succeed:
#   env         the GPU, driver, nvcc, Python and package versions (env.txt)
#   python      the Python whose JAX sees the GPU: $PY, else .venv/bin/python, else python3
#   wheels      what pyproject.toml needs and is missing, installed from the wheel folder
#               ($JAXDET_WHEELS, default wheels/) with pip --no-index: never from the network
#   sanitize    experiments/sanitize_roi_pool.sh --gpu: compute-sanitizer memcheck and racecheck
#               on the CUDA kernels (in the background, from here to the benchmarks)
#   build       the CUDA extension for the GPUs found (JAXDET_CUDA_ARCHS from nvidia-smi's
#               compute capability, e.g. 90 on H100/H200), in place
#   tests       pytest -m gpu over tests/ (a skipped GPU test counts as a failure here) and the
#               rest of tests/xla_ops/test_roi_pool.py on the GPU (the reference too), in 6 processes at
#               once (their time is mostly XLA compiling, on the CPU): tests-SHARD.log
#   torchvision whether torch and torchvision are there (without them: the benchmarks below
#               without their comparisons, and this step failed)
#   roi-pool    experiments/bench_roi_pool.py --side-by-side --torchvision (roi_pool.md)
#   roi-align   experiments/bench_roi_align.py --device gpu: RoIAlign against torchvision's CUDA
#               kernel (atomicAdd and deterministic backwards) and an XLA copy (roi_align.md)
#   nms         experiments/bench_nms.py: NMS of 12000 boxes per block size (nms.md)
#   peers       experiments/bench_peers.py: RoI pooling, RoIAlign, ResNet-50-FPN predict and training
#               step, the tiny step and predict, the VGG16
#               step against torchvision in one process (peers.md)
#   demo        `python -m jaxdet demo` trained on the GPU: mAP and time (demo/metrics.json and
#               the run's pictures; its dataset and checkpoints are not kept)
#   train-step  experiments/bench_train.py --preset vgg16 --torchvision, batch 1, 2, 4, float32
#               and bfloat16, training step only (train_step.md; rows are printed as measured)
# Environment: OUT (default experiments/results/gpu), PY, JAXDET_WHEELS, GPU_CHECK_BUDGET
# (seconds, default 460).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1

gpus=$(nvidia-smi --query-gpu=name,compute_cap --format=csv,noheader 2>/dev/null) || gpus=""
gpus=$(printf '%s\n' "$gpus" | grep -E ', *[0-9]+\.[0-9]+ *$' || true)
if [ -z "$gpus" ]; then
  echo "gpu-check: no NVIDIA GPU here (nvidia-smi is missing or lists none); nothing was run."
  exit 1
fi

OUT=${OUT:-experiments/results/gpu}
WHEELS=${JAXDET_WHEELS:-wheels}
BUDGET=${GPU_CHECK_BUDGET:-460}
START=$(date +%s)
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
STATUS="$OUT/status.txt"
: >"$STATUS"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1

record() {  # record NAME STATUS SECONDS: one line of the summary (the last one per step counts)
  printf '%s|%s|%s\n' "$1" "$2" "$3" >>"$STATUS"
  echo "gpu-check: $1: $2 (${3} s)$([ -f "$OUT/$1.log" ] && echo "; log $OUT/$1.log")"
}

# step NAME LIMIT COMMAND...: COMMAND, its output in $OUT/NAME.log, for at most LIMIT seconds
# and never past the budget.
step() {
  local name=$1 limit=$2
  shift 2
  local left=$((START + BUDGET - $(date +%s)))
  ((limit > left)) && limit=$left
  if ((limit < 15)); then
    record "$name" "SKIPPED: the ${BUDGET} s budget is spent" 0
    return 1
  fi
  local t0 rc status
  t0=$(date +%s)
  timeout --kill-after=10 "$limit" "$@" >"$OUT/$name.log" 2>&1
  rc=$?
  case $rc in
    0) status="ok" ;;
    124 | 137) status="TIMED OUT after ${limit} s" ;;
    *) status="FAILED (exit $rc)" ;;
  esac
  record "$name" "$status" $(($(date +%s) - t0))
  return "$rc"
}

# --- env and python --------------------------------------------------------------------------
{
  echo "date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
  echo "host: $(hostname), $(nproc) CPUs"
  nvidia-smi
  command -v nvcc >/dev/null && nvcc --version | tail -n 2
  command -v compute-sanitizer >/dev/null && compute-sanitizer --version | head -n 2
  echo "git: $(git rev-parse --short HEAD 2>/dev/null) $(git status --short 2>/dev/null | wc -l) changed files"
} >"$OUT/env.log" 2>&1
record env ok 0

find_python() {
  local candidate
  for candidate in ${PY:-.venv/bin/python python3}; do
    command -v "$candidate" >/dev/null 2>&1 || continue
    if "$candidate" -c 'import sys, jax; sys.exit(jax.default_backend() != "gpu")' >/dev/null 2>&1; then
      echo "$candidate"
      return 0
    fi
  done
  return 1
}
t0=$(date +%s)
if PYTHON=$(find_python); then
  record python "ok: $PYTHON" $(($(date +%s) - t0))
else
  PYTHON=""
  record python "FAILED: no Python whose JAX sees the GPU (tried ${PY:-.venv/bin/python python3}; set PY)" \
    $(($(date +%s) - t0))
fi

# --- wheels ----------------------------------------------------------------------------------
missing_requirements() {  # pyproject.toml's requirements (and pytest) that are not installed
  "$PYTHON" - <<'EOF'
import importlib.metadata, re, tomllib
with open("pyproject.toml", "rb") as f:
    project = tomllib.load(f)
wanted = (project["build-system"]["requires"] + project["project"]["dependencies"]
          + project["project"]["optional-dependencies"]["test"])
by_name = {re.match(r"[A-Za-z0-9_.-]+", r).group(0): r for r in wanted}  # one per package
for name, requirement in by_name.items():
    try:
        importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        print(requirement)
EOF
}
install_missing() {
  local missing
  missing=$(missing_requirements) || return 1
  if [ -z "$missing" ]; then
    echo "every requirement of pyproject.toml is installed"
    return 0
  fi
  echo "missing: ${missing//$'\n'/ }"
  if [ ! -d "$WHEELS" ]; then
    echo "no wheel folder at $WHEELS (set JAXDET_WHEELS; README: Checking a GPU machine)"
    return 1
  fi
  # shellcheck disable=SC2086  # one requirement per word
  "$PYTHON" -m pip install --no-index --find-links "$WHEELS" $missing
}
export -f missing_requirements install_missing
export PYTHON WHEELS
if [ -n "$PYTHON" ]; then
  step wheels 90 bash -c install_missing
  # Without torchvision the benchmarks still run, without their comparisons (a failed step).
  if "$PYTHON" -c "import torch, torchvision" >/dev/null 2>&1; then
    torchvision=(--torchvision)
  else
    torchvision=()
    record torchvision "FAILED: torch or torchvision is not installed: no comparisons with them" 0
  fi
  "$PYTHON" -c 'import jax, jaxlib; print("jax", jax.__version__, "jaxlib", jaxlib.__version__, jax.devices())' \
    >>"$OUT/env.log" 2>&1
  "$PYTHON" -c 'import torch, torchvision; print("torch", torch.__version__, "torchvision", torchvision.__version__)' \
    >>"$OUT/env.log" 2>&1
fi

# The test shards, at once; each shard's log is tests-SHARD.log. They share the GPU with each
# other and the sanitizer: no process preallocates most of its memory.
run_tests() {
  local shard args pids=() status=0 half="reference or division or products_apart or refuses"
  for shard in gpu product-float32 product-bfloat16 product-float16 rest-1 rest-2 roi-align; do
    case $shard in
      gpu) args=(-m gpu tests) ;;
      product-float32) args=(-m "not gpu" tests/xla_ops/test_roi_pool.py -k "over_the_product and float32") ;;
      product-bfloat16) args=(-m "not gpu" tests/xla_ops/test_roi_pool.py -k "over_the_product and bfloat16") ;;
      product-float16)
        args=(-m "not gpu" tests/xla_ops/test_roi_pool.py -k "over_the_product and float16 and not bfloat16") ;;
      rest-1) args=(-m "not gpu" tests/xla_ops/test_roi_pool.py -k "not over_the_product and ($half)") ;;
      rest-2) args=(-m "not gpu" tests/xla_ops/test_roi_pool.py -k "not over_the_product and not ($half)") ;;
      roi-align) args=(-m "not gpu" tests/xla_ops/test_roi_align.py -k "not shard_map") ;;
    esac
    XLA_PYTHON_CLIENT_PREALLOCATE=false "$PYTHON" -m pytest -q -rs -p no:cacheprovider "${args[@]}" \
      >"$OUT/tests-$shard.log" 2>&1 &
    pids+=("$!:$shard")
  done
  for entry in "${pids[@]}"; do
    shard=${entry#*:}
    wait "${entry%%:*}" || status=1
    echo "$shard: $(grep -E '[0-9]+ (passed|failed|skipped|errors?)\b' "$OUT/tests-$shard.log" | tail -n 1 |
      grep . || echo "no pytest summary (tests-$shard.log)")"
  done
  if grep -qE '[0-9]+ skipped' "$OUT/tests-gpu.log"; then
    echo "gpu: GPU tests were skipped on a GPU machine (reasons in tests-gpu.log)"
    status=1
  fi
  return "$status"
}
export -f run_tests
export OUT

# --- sanitizer (background), build, tests ----------------------------------------------------
# Its own logs (memcheck, racecheck) in $OUT/sanitize/; the FFI headers from the Python found.
step sanitize 240 env PY="${PYTHON:-.venv/bin/python}" OUT="$OUT/sanitize" \
  bash experiments/sanitize_roi_pool.sh --gpu &
sanitize_pid=$!

archs=$(printf '%s\n' "$gpus" | sed -E 's/.*, *([0-9]+)\.([0-9]+) *$/\1\2/' | sort -u | paste -sd ';' -)
if [ -n "$PYTHON" ]; then
  step build 240 env JAXDET_CUDA=1 JAXDET_CUDA_ARCHS="$archs" "$PYTHON" setup.py build_ext --inplace -j 4 &&
    step extension 60 "$PYTHON" -c 'from xla_ops import _native
import jax
assert jax.default_backend() == "gpu", jax.default_backend()
assert _native.is_built("cuda"), _native.why_not_built("cuda")
print("the CUDA extension is built and registered")'
  step tests 240 bash -c run_tests
fi
wait "$sanitize_pid"

# --- benchmarks, one at a time on the GPU ----------------------------------------------------
if [ -n "$PYTHON" ]; then
  rm -f "$OUT/roi_pool.md" "$OUT/roi_align.md" "$OUT/nms.md" "$OUT/peers.md" "$OUT/train_step.md"
  # torch shares the GPU with JAX in these processes: JAX takes half of its memory, not 75%.
  XLA_PYTHON_CLIENT_MEM_FRACTION=0.5 step roi-pool 90 "$PYTHON" experiments/bench_roi_pool.py \
    --side-by-side "${torchvision[@]}" --rois 128 2000 --repeats 30 --out "$OUT/roi_pool.md"
  if [ ${#torchvision[@]} -gt 0 ]; then
    XLA_PYTHON_CLIENT_MEM_FRACTION=0.5 step roi-align 60 "$PYTHON" experiments/bench_roi_align.py --device gpu \
      --rounds 20 --out "$OUT/roi_align.md"
  fi
  step nms 60 "$PYTHON" experiments/bench_nms.py --repeats 20 --out "$OUT/nms.md"
  XLA_PYTHON_CLIENT_MEM_FRACTION=0.5 step peers 200 "$PYTHON" experiments/bench_peers.py \
    --roi-rounds 20 --tiny-rounds 10 --vgg16-rounds 5 --fpn-rounds 5 --out "$OUT/peers.md"
  # The run (dataset, checkpoints) in a scratch directory; its figures and pictures to $OUT/demo.
  demo_dir=$(mktemp -d)
  step demo 180 "$PYTHON" -m jaxdet demo --workdir "$demo_dir" --device gpu --no-progress
  mkdir -p "$OUT/demo"
  cp "$demo_dir"/*.json "$demo_dir"/*.jsonl "$demo_dir"/*.png "$OUT/demo/" 2>/dev/null
  rm -rf "$demo_dir"
  XLA_PYTHON_CLIENT_MEM_FRACTION=0.5 step train-step 240 "$PYTHON" experiments/bench_train.py \
    --preset vgg16 --batch-sizes 1 2 4 --dtypes float32 bfloat16 --impls ffi "${torchvision[@]}" \
    --train-only --steps 10 --out "$OUT/train_step.md"
fi

# --- summary ---------------------------------------------------------------------------------
summary="$OUT/summary.md"
failed=0
{
  echo "# make gpu-check, $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo
  echo "GPUs: $(printf '%s' "$gpus" | paste -sd ';' -); built for JAXDET_CUDA_ARCHS=$archs;" \
    "Python: ${PYTHON:-none}; $(($(date +%s) - START)) s of the ${BUDGET} s budget. Logs: $OUT/STEP.log."
  echo
  echo "| step | status | seconds |"
  echo "|---|---|---:|"
  while read -r name; do
    line=$(grep "^$name|" "$STATUS" | tail -n 1)
    status=$(echo "$line" | cut -d '|' -f 2)
    echo "| $name | $status | $(echo "$line" | cut -d '|' -f 3) |"
    case $status in ok*) ;; *) failed=1 ;; esac
  done < <(cut -d '|' -f 1 "$STATUS" | awk '!seen[$0]++')
  echo
  echo "## Tests"
  if [ -f "$OUT/tests.log" ]; then sed 's/^/- /' "$OUT/tests.log"; else echo "(not run)"; fi
  echo
  echo "## compute-sanitizer (last lines of sanitize.log)"
  echo
  echo '```'
  [ -f "$OUT/sanitize.log" ] && tail -n 12 "$OUT/sanitize.log"
  echo '```'
  echo
  echo "## RoI pooling against torchvision.ops.roi_pool and a copy"
  echo
  if [ -f "$OUT/roi_pool.md" ]; then cat "$OUT/roi_pool.md"; else echo "(none: see roi-pool.log)"; fi
  echo
  echo "## RoIAlign against torchvision.ops.roi_align and a copy"
  echo
  if [ -f "$OUT/roi_align.md" ]; then cat "$OUT/roi_align.md"; else echo "(none: see roi-align.log)"; fi
  echo
  echo "## NMS block size"
  echo
  if [ -f "$OUT/nms.md" ]; then cat "$OUT/nms.md"; else echo "(none: see nms.log)"; fi
  echo
  echo "## jaxdet against torchvision (bench_peers.py)"
  echo
  if [ -f "$OUT/peers.md" ]; then cat "$OUT/peers.md"; else echo "(none: see peers.log)"; fi
  echo
  echo "## Demo (shapes_demo, the full schedule, on the GPU)"
  echo
  if [ -f "$OUT/demo/metrics.json" ] && [ -n "$PYTHON" ]; then
    "$PYTHON" - "$OUT/demo/metrics.json" "$(grep '^demo|' "$STATUS" | tail -n 1 | cut -d '|' -f 3)" <<'EOF'
import json, sys
m = json.load(open(sys.argv[1]))
print(f"VOC07 mAP@0.5 {m['voc07_map']:.3f}, COCO AP {m['coco_ap']:.3f}; {m['steps']} steps of "
      f"{m['batch_size']} images in {m['train_seconds']:.1f} s ({m['train_images_per_second']:.0f} images/s); "
      f"the whole demo (data, compilation, training, evaluation) {sys.argv[2]} s of wall time")
EOF
  else
    echo "(none: see demo.log)"
  fi
  echo
  echo "## VGG16 600x1000 training step against torchvision's FasterRCNN (VGG16, RoIPool)"
  echo
  if [ -f "$OUT/train_step.md" ]; then
    cat "$OUT/train_step.md"
  else
    echo "Rows measured before the step ended (batch | dtype | RoI pool | compile s | train img/s | ...):"
    echo
    grep -E '^[0-9]+ \| ' "$OUT/train-step.log" 2>/dev/null || echo "(none: see train-step.log)"
  fi
} >"$summary"
echo "gpu-check: summary in $summary"
if ((failed)); then
  echo "gpu-check: some steps did not succeed (see the summary)"
  exit 1
fi
