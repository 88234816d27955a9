#!/usr/bin/env bash
# Draw each frame's label, confidence and source (device, or server @resolution) on the video and
# write an MP4. textoverlay is driven frame by frame from the CboMeta (`cbo overlay`), which
# gst-launch alone cannot do. Needs `make build`.
#   pipelines/overlay.sh [VIDEO] [OUT.mp4]
# With SERVER=host:port CERT=cert.pem [TOKEN_FILE=file] low-confidence frames go to a cboserver
# (TOKEN=... also works: it is handed over through a pipe, never written to a file).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
video=${1:-$here/examples/media/bottle-detection.mp4}
out=${2:-overlay.mp4}
cbo=${CBO_BIN:-$here/target/release/cbo}
args=(--calibration "$here/models/efficientnet-lite0-int8pt-224.calibration.json")
if [ -n "${SERVER:-}" ]; then
    args+=(--server "$SERVER" --server-cert "${CERT:?set CERT with SERVER}" --policy threshold
           --deadline 500 --max-in-flight 4)
    if [ -n "${TOKEN_FILE:-}" ]; then
        args+=(--token-file "$TOKEN_FILE")
    elif [ -n "${TOKEN:-}" ]; then
        # A process substitution: readable by cbo alone, gone when it exits.
        exec 3< <(printf '%s' "$TOKEN")
        args+=(--token-file /dev/fd/3)
        unset TOKEN
    fi
fi
[ -n "${FRAMES:-}" ] && args+=(--max-frames "$FRAMES")
exec "$cbo" overlay "$video" "$out" "${args[@]}"
