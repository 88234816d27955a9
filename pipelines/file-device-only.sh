#!/usr/bin/env bash
# Classify every frame of a video file on the device model and print each result as a bus
# message (gst-launch-1.0 -m). Needs `make build` first; no other environment.
#   pipelines/file-device-only.sh [VIDEO]      (FRAMES=N: stop after about N frames)
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
video=${1:-$here/examples/media/bottle-detection.mp4}
# CBO_PLUGIN_DIR: where libgstcbo.so is (default: the release build).
export GST_PLUGIN_PATH="${CBO_PLUGIN_DIR:-$here/target/release}${GST_PLUGIN_PATH:+:$GST_PLUGIN_PATH}"
# decodebin hands cbofilter its native raw format (I420 here): no videoconvert needed.
exec gst-launch-1.0 -m \
    filesrc location="$video" ! decodebin ! ${FRAMES:+identity eos-after=$FRAMES !} \
    cbofilter post-messages=true top-k=3 ! \
    fakesink sync=false
