#!/usr/bin/env bash
# One prepared GPU benchmark, run through the composed stack: the run exported as a
# tensorrt-plan version, `docker compose --profile gpu up triton` (trt-build makes the FP16
# engine on this GPU and checks it against ONNX Runtime first), then perf_analyzer from the
# NGC SDK image over batch sizes and concurrency; the CSVs land in OUT.
#
#   bench/gpu.sh RUN_OR_REPOSITORY [OUT]
#
# RUN_OR_REPOSITORY: a training run (exported here with --target tensorrt-plan) or a
# repository already holding such a version. Needs, on the GPU host: Docker with the NVIDIA
# Container Toolkit, docker compose (v2 plugin or docker-compose), nvidia-smi, and the
# project's venv (make setup) for covidct. Env: BATCHES (default "1 8 16"), CONCURRENCY
# (default 1:32:x2), MEASUREMENT_MS (default 3000), READY_TIMEOUT_S (default 1800: the
# first start builds the engine), SDK_IMAGE (default the SDK image of the compose file's
# Triton release), CHECK_ONLY=1 (stop before the GPU part).
set -euo pipefail

here="$(cd "$(dirname "$0")/.." && pwd)"
src="${1:?usage: bench/gpu.sh RUN_OR_REPOSITORY [OUT]}"
out="$(mkdir -p "${2:-${OUT:-$here/bench/results/gpu}}" && cd "${2:-${OUT:-$here/bench/results/gpu}}" && pwd)"
batches="${BATCHES:-1 8 16}"
concurrency="${CONCURRENCY:-1:32:x2}"
measurement="${MEASUREMENT_MS:-3000}"
ready_timeout="${READY_TIMEOUT_S:-1800}"
sdk_image="${SDK_IMAGE:-nvcr.io/nvidia/tritonserver:24.10-py3-sdk}"
covidct="${COVIDCT:-$here/.venv/bin/covidct}"
log() { printf '[gpu] %s\n' "$*" >&2; }

if [ -f "$src/model_spec.json" ]; then
    repo="$out/models"
    rm -rf "$repo"
    log "exporting $src as a tensorrt-plan version into $repo"
    "$covidct" export --run "$src" --repository "$repo" --target tensorrt-plan --max-batch-size 16 \
        > "$out/export.json"
else
    repo="$(cd "$src" && pwd)"
fi
version_dir="$(ls -d "$repo"/*/[0-9]* | sort -V | tail -n 1)"
grep -q '"target": "tensorrt-plan"' "$version_dir/manifest.json" 2> /dev/null \
    || { log "$version_dir is not a tensorrt-plan version (covidct export --target tensorrt-plan)"; exit 2; }
log "version to serve: $version_dir"

if docker compose version > /dev/null 2>&1; then compose=(docker compose); else compose=(docker-compose); fi
missing=()
command -v docker > /dev/null || missing+=(docker)
"${compose[@]}" version > /dev/null 2>&1 || missing+=("docker compose")
command -v nvidia-smi > /dev/null || missing+=(nvidia-smi)
if [ "${#missing[@]}" -gt 0 ] || [ "${CHECK_ONLY:-0}" = 1 ]; then
    [ "${#missing[@]}" -gt 0 ] && log "not a GPU host: missing ${missing[*]}"
    log "stopped before the GPU part; ready: $version_dir"
    [ "${#missing[@]}" -gt 0 ] && exit 3
    exit 0
fi

export MODEL_REPOSITORY="$repo" COVIDCT_ENV_FILE="${COVIDCT_ENV_FILE:-$out/gpu.env}"
[ -f "$COVIDCT_ENV_FILE" ] || : > "$COVIDCT_ENV_FILE"
stack=("${compose[@]}" -p covidct-gpu-bench -f "$here/docker-compose.yml" -f "$here/docker-compose.override.yml" --profile gpu)
down() {
    "${stack[@]}" logs --no-color trt-build triton > "$out/compose.log" 2>&1 || true
    "${stack[@]}" down > /dev/null 2>&1 || true
}
trap down EXIT
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$out/gpu.csv"
log "starting Triton on $(tail -n 1 "$out/gpu.csv") (trt-build first: the FP16 engine)"
"${stack[@]}" up -d triton || { log "docker compose up failed"; exit 4; }
deadline=$(( $(date +%s) + ready_timeout ))
until curl -fs "127.0.0.1:${TRITON_HTTP_PORT:-8000}/v2/health/ready" > /dev/null 2>&1; do
    state="$("${stack[@]}" ps triton 2> /dev/null | tail -n +3)"
    if [ "$(date +%s)" -ge "$deadline" ] || grep -qE "Exit|exited" <<< "$state"; then
        down
        log "Triton never became ready (${ready_timeout} s or it exited): see $out/compose.log"
        tail -n 20 "$out/compose.log" >&2 || true
        exit 4
    fi
    sleep 5
done
cp "$version_dir/model.plan.json" "$version_dir/trtexec.log" "$out/" 2> /dev/null || true

# perf_analyzer from the SDK image, on the host network, reading and writing OUT
cat > "$out/perf_analyzer" <<WRAP
#!/usr/bin/env bash
exec docker run --rm --network host -v "$out:$out" "$sdk_image" perf_analyzer "\$@"
WRAP
chmod +x "$out/perf_analyzer"
for b in $batches; do
    log "perf_analyzer sweep, batch $b, concurrency $concurrency"
    COVIDCT_PERF_ANALYZER="$out/perf_analyzer" "$covidct" bench triton \
        --url "127.0.0.1:${TRITON_GRPC_PORT:-8001}" --batch "$b" --concurrency "$concurrency" \
        --measurement-ms "$measurement" --out "$out/batch$b" > /dev/null
done
{ printf '## bench/gpu.sh on %s\n\n' "$(tail -n 1 "$out/gpu.csv")"
  for b in $batches; do sed 's/^## /### /' "$out/batch$b/section.md"; echo; done; } > "$out/section.md"
log "done: $out (section.md for covidct bench report)"
