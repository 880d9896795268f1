#!/usr/bin/env bash
# One script for a GPU machine lent for at most 15 minutes in all, without network (Python + torch
# preinstalled; other wheels carried in). Each step runs under its own `timeout`, so one hang cannot
# use up the machine; everything goes into OUT_DIR (one log per step, steps.tsv with each step's exit
# status and seconds, benchmarks.jsonl).
#
#   benchmarks/gpu_check.sh OUT_DIR                 run it (on the GPU machine)
#   benchmarks/gpu_check.sh --dry-run OUT_DIR       on any machine: write and check the plan, run nothing
#   benchmarks/gpu_check.sh --fetch-wheels DIR      beforehand, with network: download the test wheels
#
# WHEELS=DIR installs the carried wheels first (pip --no-index --find-links DIR); QUICK=1 halves the
# limits of the test steps. The limits add up to under 700 s (checked by --dry-run), leaving the
# rest of the 15 minutes to the machine's start and the transfers. Steps: device info, build (nvcc), the CUDA kernel tests, compute-sanitizer
# memcheck and racecheck over one short kernel test, every benchmark with --json.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
DRY=0
case "${1:-}" in
  --fetch-wheels)
    dir="${2:?usage: benchmarks/gpu_check.sh --fetch-wheels DIR}"
    mkdir -p "$dir"
    exec python -m pip download --dest "$dir" pytest pytest-timeout hypothesis einops timm kornia nerfacc \
      safetensors pillow ninja tqdm tensorboard vector-quantize-pytorch psutil scikit-image
    ;;
  --dry-run) DRY=1; shift ;;
esac
OUT="${1:?usage: benchmarks/gpu_check.sh [--dry-run] OUT_DIR}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
export VQ3DLIB_CACHE="${VQ3DLIB_CACHE:-/tmp/vq3dlib-cache}"
export CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}"
export MAX_JOBS="${MAX_JOBS:-16}"
if [ "$DRY" = 0 ] && [ -z "${TORCH_CUDA_ARCH_LIST:-}" ]; then
  TORCH_CUDA_ARCH_LIST="$(python -c 'import torch; m, n = torch.cuda.get_device_capability(); print(f"{m}.{n}")')"
  export TORCH_CUDA_ARCH_LIST
fi
scale=1
[ "${QUICK:-0}" = "1" ] && scale=2
status=0
: > "$OUT/steps.tsv"
[ "$DRY" = 1 ] && : > "$OUT/plan.txt"

# step NAME LIMIT_SECONDS CMD...: runs CMD under timeout, output to OUT/NAME.log, status to steps.tsv
step() {
  local name="$1" limit="$2"
  shift 2
  if [ "$DRY" = 1 ]; then
    printf '%s\t%s\t%s\n' "$name" "$limit" "$*" >> "$OUT/plan.txt"
    return 0
  fi
  echo "== $name (limit ${limit}s) =="
  local start=$SECONDS rc
  timeout --kill-after=15 "$limit" "$@" > "$OUT/$name.log" 2>&1
  rc=$?
  printf '%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - start))" >> "$OUT/steps.tsv"
  tail -n 3 "$OUT/$name.log"
  [ "$rc" = 0 ] || status=1
}

# the CUDA kernel target of the kernel tests (conftest.kernel_target); short: one test for the tools
KERNEL_TESTS=(tests/test_ops_triplane.py tests/test_render_march.py tests/test_render_volrend.py)
SHORT_TEST=(tests/test_render_volrend.py -k "density_kernel_matches_reference and cuda- and not cuda-emu")
SANITIZER="$CUDA_HOME/bin/compute-sanitizer"
PYTEST=(python -m pytest -q -p no:cacheprovider -x)

if [ -n "${WHEELS:-}" ]; then
  step install 120 python -m pip install --no-index --find-links "$WHEELS" -e ".[test]"
fi
step device 20 bash -c "nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; date -u"
step build 180 python -m vq3dlib.backend --build --cuda
step cuda_kernel_tests $((120 / scale)) "${PYTEST[@]}" -k "cuda and not cuda-emu" "${KERNEL_TESTS[@]}"
step cuda_tests_rest $((60 / scale)) "${PYTEST[@]}" -m "cuda and not slow" tests
step memcheck $((60 / scale)) "$SANITIZER" --tool memcheck --error-exitcode 9 "${PYTEST[@]}" "${SHORT_TEST[@]}"
step racecheck $((60 / scale)) "$SANITIZER" --tool racecheck --error-exitcode 9 "${PYTEST[@]}" "${SHORT_TEST[@]}"
: > "$OUT/benchmarks.jsonl"
for bench in benchmarks/*_speed.py; do
  name="$(basename "$bench" .py)"
  step "$name" 50 bash -c "python '$bench' --device cuda --json >> '$OUT/benchmarks.jsonl'"
done

if [ "$DRY" = 1 ]; then
  # the plan must still fit the machine and name files and options that exist
  total=$(awk -F'\t' '{s += $2} END {print s}' "$OUT/plan.txt")
  echo "plan: $(wc -l < "$OUT/plan.txt") steps, $total s of time limits in all"
  [ "$total" -le 700 ] || { echo "the limits add up to more than 700 s" >&2; status=1; }
  for f in "${KERNEL_TESTS[@]}" "${SHORT_TEST[0]}"; do [ -f "$f" ] || { echo "missing $f" >&2; status=1; }; done
  for bench in benchmarks/*_speed.py; do
    for opt in '"--device"' '"--json"'; do
      grep -q -- "$opt" "$bench" || { echo "$bench has no $opt option" >&2; status=1; }
    done
  done
  cat "$OUT/plan.txt"
fi
exit $status
