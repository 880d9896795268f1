#!/usr/bin/env bash
# One script for a GPU machine without network (Python + torch preinstalled; other wheels carried in
# and installed by the caller, e.g. into /tmp/site on PYTHONPATH). Builds the extension with the CUDA
# kernels, runs the whole test suite (CUDA tests included, slow ones too unless QUICK=1) and every
# benchmark with --json on the GPU, and writes everything into the folder given as the argument.
#
#   benchmarks/gpu_check.sh OUT_DIR
set -uo pipefail
OUT="${1:?usage: benchmarks/gpu_check.sh OUT_DIR}"
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
export VQ3DLIB_CACHE="${VQ3DLIB_CACHE:-/tmp/vq3dlib-cache}"
export CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}"
if [ -z "${TORCH_CUDA_ARCH_LIST:-}" ]; then
  TORCH_CUDA_ARCH_LIST="$(python -c 'import torch; m, n = torch.cuda.get_device_capability(); print(f"{m}.{n}")')"
  export TORCH_CUDA_ARCH_LIST
fi
export MAX_JOBS="${MAX_JOBS:-16}"
status=0

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; date -u; } > "$OUT/device.txt" 2>&1
echo "== build ==" && python -m vq3dlib.backend --build --cuda 2>&1 | tee "$OUT/build.log" || status=1

marker="not slow"
[ "${QUICK:-0}" = "1" ] || marker=""
echo "== tests ==" && python -m pytest -q -p no:cacheprovider ${marker:+-m "$marker"} tests 2>&1 | tee "$OUT/tests.log"
[ "${PIPESTATUS[0]}" = "0" ] || status=1

echo "== benchmarks ==" && : > "$OUT/benchmarks.jsonl"
for bench in benchmarks/*_speed.py; do
  name="$(basename "$bench" .py)"
  echo "-- $name"
  if python "$bench" --device cuda --json >> "$OUT/benchmarks.jsonl" 2> "$OUT/$name.err"; then
    rm -f "$OUT/$name.err"
  else
    status=1
    echo "{\"benchmark\": \"$name\", \"error\": \"see $name.err\"}" >> "$OUT/benchmarks.jsonl"
  fi
done
echo "== examples on the GPU ==" && mkdir -p "$OUT/fit_scene"
# issue 9: per-scene fit at 256x256, ours side by side with nerfacc's OccGridEstimator
timeout 900 python docs/examples/fit_scene.py --device cuda --resolution 256 --compare-nerfacc \
  --out "$OUT/fit_scene" 2>&1 | tee "$OUT/fit_scene.log"
[ "${PIPESTATUS[0]}" = "0" ] || status=1
cat "$OUT/benchmarks.jsonl"
exit $status
