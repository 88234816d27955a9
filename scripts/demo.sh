#!/usr/bin/env bash
# `make demo`: starts cboserver on loopback (self-signed certificate, bearer token) with the
# default server model, runs the bundled bottle clip through cbofilter with policy=threshold and
# the shipped calibration, prints what offloading did, then stops the server.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
bin="$here/target/release"
state="$here/.cache/demo"
mkdir -p "$state"
[ -s "$state/token" ] || head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$state/token"

log="$state/cboserver.log"
"$bin/cboserver" --listen 127.0.0.1:0 --self-signed "$state/cert" --token-file "$state/token" \
    --model "$here/models/efficientnet-lite2-fp32-260.onnx" > "$log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null || true' EXIT
addr=""
for _ in $(seq 1 300); do
    addr=$(sed -n 's/^listening on //p' "$log" | head -n1)
    [ -n "$addr" ] && break
    kill -0 $server 2>/dev/null || { cat "$log"; echo "cboserver failed to start" >&2; exit 1; }
    sleep 0.1
done
[ -n "$addr" ] || { cat "$log"; echo "cboserver did not start listening" >&2; exit 1; }
echo "cboserver (EfficientNet-Lite2) listening on $addr"

# Every frame of the clip shows a water bottle (ImageNet class 898).
"$bin/cbo" classify "$here/examples/media/bottle-detection.mp4" \
    --calibration "$here/models/efficientnet-lite0-int8pt-224.calibration.json" \
    --server "$addr" --server-cert "$state/cert/cert.pem" --token-file "$state/token" \
    --policy threshold --threshold 0.5 --deadline 500 --max-in-flight 4 --expect-class 898
