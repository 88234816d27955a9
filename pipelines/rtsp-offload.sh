#!/usr/bin/env bash
# Classify an RTSP camera stream and offload low-confidence frames to a cboserver; results go to
# the bus (gst-launch-1.0 -m). Needs `make build` and a running cboserver:
#   SERVER=127.0.0.1:4433 CERT=/tmp/cbo-cert/cert.pem TOKEN=... pipelines/rtsp-offload.sh rtsp://camera/stream
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
uri=${1:?usage: $0 rtsp://host[:port]/path}
: "${SERVER:?set SERVER=host:port of a cboserver}"
: "${CERT:?set CERT to the server certificate}"
# CBO_PLUGIN_DIR: where libgstcbo.so is (default: the release build).
export GST_PLUGIN_PATH="${CBO_PLUGIN_DIR:-$here/target/release}${GST_PLUGIN_PATH:+:$GST_PLUGIN_PATH}"
# A live source: when max-in-flight frames are outstanding, further candidates stay on the device
# (decision=busy) instead of stalling the camera; policy=cbo adapts to the measured uplink.
exec gst-launch-1.0 -m \
    rtspsrc location="$uri" latency=200 ! decodebin ! \
    cbofilter post-messages=true \
        calibration="$here/models/efficientnet-lite0-int8pt-224.calibration.json" \
        server="$SERVER" server-cert="$CERT" ${TOKEN:+token="$TOKEN"} \
        policy="${POLICY:-cbo}" deadline="${DEADLINE:-500}" ! \
    fakesink sync=true
