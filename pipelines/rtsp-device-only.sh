#!/usr/bin/env bash
# Classify an RTSP camera stream on the device; results go to the bus (gst-launch-1.0 -m).
# Needs `make build`.
#   pipelines/rtsp-device-only.sh rtsp://camera/stream
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
uri=${1:?usage: $0 rtsp://host[:port]/path}
# CBO_PLUGIN_DIR: where libgstcbo.so is (default: the release build).
export GST_PLUGIN_PATH="${CBO_PLUGIN_DIR:-$here/target/release}${GST_PLUGIN_PATH:+:$GST_PLUGIN_PATH}"
# rtspsrc latency= is the jitter buffer; decodebin picks the H.264/H.265 decoder.
exec gst-launch-1.0 -m \
    rtspsrc location="$uri" latency=200 ! decodebin ! \
    cbofilter post-messages=true \
        calibration="$here/models/efficientnet-lite0-int8pt-224.calibration.json" ! \
    fakesink sync=false
