#!/usr/bin/env bash
# Classify a video file on the device and offload low-confidence frames to a cboserver.
# Needs `make build`. Start a server first, e.g.
#   target/release/cboserver --self-signed /tmp/cbo-cert --token-file token &
# then
#   SERVER=127.0.0.1:4433 CERT=/tmp/cbo-cert/cert.pem TOKEN=$(cat token) pipelines/file-offload.sh [VIDEO]
# FRAMES=N stops after about N frames. Prints each frame's result (source=device or server,
# decision, resolution) as a bus message.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
video=${1:-$here/examples/media/bottle-detection.mp4}
: "${SERVER:?set SERVER=host:port of a cboserver}"
: "${CERT:?set CERT to the server certificate (cboserver --self-signed DIR writes DIR/cert.pem)}"
# CBO_PLUGIN_DIR: where libgstcbo.so is (default: the release build).
export GST_PLUGIN_PATH="${CBO_PLUGIN_DIR:-$here/target/release}${GST_PLUGIN_PATH:+:$GST_PLUGIN_PATH}"
# policy=threshold: frames whose calibrated confidence is below 0.5 go to the server at 224 px;
# each frame leaves at most deadline=500 ms after it arrived, in order, with the server's label
# if it answered in time and the device's otherwise. policy=cbo decides by the measured uplink.
exec gst-launch-1.0 -m \
    filesrc location="$video" ! decodebin ! ${FRAMES:+identity eos-after=$FRAMES !} \
    cbofilter post-messages=true \
        calibration="$here/models/efficientnet-lite0-int8pt-224.calibration.json" \
        server="$SERVER" server-cert="$CERT" ${TOKEN:+token="$TOKEN"} \
        policy="${POLICY:-threshold}" threshold=0.5 deadline=500 ! \
    fakesink sync=false
