#!/usr/bin/env bash
# Classify a V4L2 webcam live, offloading low-confidence frames to a cboserver, and show the
# video. Needs `make build`, a camera at DEVICE (default /dev/video0) and a running cboserver:
#   SERVER=127.0.0.1:4433 CERT=/tmp/cbo-cert/cert.pem TOKEN=... pipelines/webcam-offload.sh [DEVICE]
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
device=${1:-/dev/video0}
: "${SERVER:?set SERVER=host:port of a cboserver}"
: "${CERT:?set CERT to the server certificate}"
# CBO_PLUGIN_DIR: where libgstcbo.so is (default: the release build).
export GST_PLUGIN_PATH="${CBO_PLUGIN_DIR:-$here/target/release}${GST_PLUGIN_PATH:+:$GST_PLUGIN_PATH}"
# The display sink is synchronised: cbofilter reports the deadline as latency, so frames held for
# the server's answer are still shown on time.
exec gst-launch-1.0 -m \
    v4l2src device="$device" ! videoconvert ! \
    cbofilter post-messages=true \
        calibration="$here/models/efficientnet-lite0-int8pt-224.calibration.json" \
        server="$SERVER" server-cert="$CERT" ${TOKEN:+token="$TOKEN"} \
        policy="${POLICY:-cbo}" deadline="${DEADLINE:-300}" ! \
    videoconvert ! autovideosink
