#!/usr/bin/env bash
# Classify a V4L2 webcam live and show the video; results go to the bus (gst-launch-1.0 -m).
# Needs `make build` and a camera at DEVICE (default /dev/video0).
#   pipelines/webcam-device-only.sh [DEVICE]
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
device=${1:-/dev/video0}
# CBO_PLUGIN_DIR: where libgstcbo.so is (default: the release build).
export GST_PLUGIN_PATH="${CBO_PLUGIN_DIR:-$here/target/release}${GST_PLUGIN_PATH:+:$GST_PLUGIN_PATH}"
# videoconvert only when the camera's format (e.g. YUY2) is not one cbofilter reads directly.
exec gst-launch-1.0 -m \
    v4l2src device="$device" ! videoconvert ! \
    cbofilter post-messages=true \
        calibration="$here/models/efficientnet-lite0-int8pt-224.calibration.json" ! \
    videoconvert ! autovideosink
