#!/usr/bin/env bash
# Starts Shadowtune in the foreground for ../shared/bench/peers.sh: two routes on the
# bench's fake upstream (bench-model -> JSON, bench-model-stream -> SSE), call log ON,
# one worker. The harness substitutes the port and exports UPSTREAM_BASE etc.
set -euo pipefail
port="$1"
run_dir="${BENCH_RUN_DIR:-$(mktemp -d)}"
cfg="$run_dir/shadowtune-bench.yaml"
cat > "$cfg" <<YAML
server: {host: 127.0.0.1, port: $port, auth: open}
store: {log_dir: "$run_dir/shadowtune-log"}
telemetry: {prometheus: true}
upstreams:
  bench-model: {base_url: "$UPSTREAM_BASE", retries: 0}
  bench-model-stream: {base_url: "$UPSTREAM_STREAM_BASE", retries: 0}
routes:
  bench-model: {baseline: bench-model}
  bench-model-stream: {baseline: bench-model-stream}
YAML
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
exec "${SHADOWTUNE_PYTHON:-$here/.venv/bin/python}" -m gateway serve --config "$cfg" --log-level warning
