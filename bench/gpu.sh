#!/usr/bin/env bash
# One prepared GPU benchmark: TensorRT FP16 plan built on this GPU, served by Triton,
# perf_analyzer sweep over batch sizes and concurrency; the CSVs land in OUT.
#
#   bench/gpu.sh RUN_OR_REPOSITORY [OUT]
#
# RUN_OR_REPOSITORY: a training run (exported here with --target tensorrt-plan) or a
# repository already holding such a version. Needs, on the GPU host: trtexec and a
# tritonserver with the TensorRT backend (the NGC tritonserver container has both), the
# project's venv (make setup) for covidct and perf_analyzer. Env: BATCHES (default
# "1 8 16"), CONCURRENCY (default 1:32:x2), MEASUREMENT_MS (default 3000),
# TRITONSERVER (default: tritonserver on PATH), CHECK_ONLY=1 (stop before the GPU part).
set -euo pipefail

here="$(cd "$(dirname "$0")/.." && pwd)"
src="${1:?usage: bench/gpu.sh RUN_OR_REPOSITORY [OUT]}"
out="${2:-${OUT:-$here/bench/results/gpu}}"
batches="${BATCHES:-1 8 16}"
concurrency="${CONCURRENCY:-1:32:x2}"
measurement="${MEASUREMENT_MS:-3000}"
covidct="${COVIDCT:-$here/.venv/bin/covidct}"
tritonserver="${TRITONSERVER:-tritonserver}"
mkdir -p "$out"
log() { printf '[gpu] %s\n' "$*" >&2; }

if [ -f "$src/model_spec.json" ]; then
    repo="$out/models"
    rm -rf "$repo"
    log "exporting $src as a tensorrt-plan version into $repo"
    "$covidct" export --run "$src" --repository "$repo" --target tensorrt-plan --max-batch-size 16 \
        > "$out/export.json"
else
    repo="$src"
fi
version_dir="$(ls -d "$repo"/*/[0-9]* | sort -V | tail -n 1)"
[ -f "$version_dir/build_plan.sh" ] || { log "$version_dir has no build_plan.sh: not a tensorrt-plan version"; exit 2; }
log "version to serve: $version_dir"

missing=()
command -v trtexec > /dev/null || missing+=(trtexec)
command -v "$tritonserver" > /dev/null || missing+=("$tritonserver")
command -v nvidia-smi > /dev/null || missing+=(nvidia-smi)
if [ "${#missing[@]}" -gt 0 ] || [ "${CHECK_ONLY:-0}" = 1 ]; then
    [ "${#missing[@]}" -gt 0 ] && log "not a GPU host: missing ${missing[*]} (use the NGC tritonserver container)"
    log "stopped before the GPU part; ready: $version_dir"
    [ "${#missing[@]}" -gt 0 ] && exit 3
    exit 0
fi

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$out/gpu.csv"
log "building the TensorRT FP16 engine on $(tail -n 1 "$out/gpu.csv")"
( cd "$version_dir" && ./build_plan.sh ) > "$out/trtexec.log" 2>&1
grep -E "Throughput|Latency" "$out/trtexec.log" | tail -n 3 >&2 || true

"$tritonserver" --model-repository="$repo" --grpc-address=127.0.0.1 --grpc-port=8001 \
    --http-address=127.0.0.1 --http-port=8000 --metrics-port=8002 > "$out/triton.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true; wait $server 2>/dev/null || true' EXIT
for _ in $(seq 1 120); do
    curl -fs 127.0.0.1:8000/v2/health/ready > /dev/null 2>&1 && break
    kill -0 $server 2>/dev/null || { log "tritonserver exited: $(tail -n 5 "$out/triton.log")"; exit 4; }
    sleep 1
done
for b in $batches; do
    log "perf_analyzer sweep, batch $b, concurrency $concurrency"
    "$covidct" bench triton --url 127.0.0.1:8001 --batch "$b" --concurrency "$concurrency" \
        --measurement-ms "$measurement" --out "$out/batch$b" > /dev/null
done
{ printf '## bench/gpu.sh on %s\n\n' "$(tail -n 1 "$out/gpu.csv")"
  for b in $batches; do sed 's/^## /### /' "$out/batch$b/section.md"; echo; done; } > "$out/section.md"
log "done: $out (section.md for covidct bench report)"
