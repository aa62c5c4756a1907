#!/usr/bin/env bash
# make bench: ../shared/bench/peers.sh with Shadowtune as the candidate (call log on, one worker).
# Extra arguments go to peers.sh (e.g. --quick, --json-out FILE).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
shared="${SHADOWTUNE_SHARED:-$here/../shared}"
exec "$shared/bench/peers.sh" \
  --candidate-name shadowtune \
  --candidate-version "$(git -C "$here" describe --always --dirty 2>/dev/null || echo dev)" \
  --candidate-cmd "$here/bench/peers-candidate.sh {port}" \
  --candidate-url 'http://127.0.0.1:{port}/v1/chat/completions' \
  --candidate-model bench-model --candidate-stream-model bench-model-stream \
  "$@"
