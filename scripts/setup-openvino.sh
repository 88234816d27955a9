#!/usr/bin/env bash
# Fetches the ONNX Runtime build with the OpenVINO execution provider (the `onnxruntime-openvino`
# PyPI wheel: libonnxruntime, the OpenVINO provider, OpenVINO with its CPU, GPU and NPU plugins,
# TBB) into .cache/onnxruntime-openvino/lib/. The libraries carry RPATH $ORIGIN, so loading
# libonnxruntime.so from there finds the rest without LD_LIBRARY_PATH. Opt-in (`make
# setup-openvino`; `make test` runs it); idempotent and quick when the library is there.
set -euo pipefail

OV_ORT_VERSION=1.24.1
OV_ORT_LIB=libonnxruntime.so.${OV_ORT_VERSION}
here=$(cd "$(dirname "$0")/.." && pwd)
cache="$here/.cache/onnxruntime-openvino"

say() { printf '[setup-openvino] %s\n' "$*" >&2; }

if [ -f "$cache/lib/$OV_ORT_LIB" ] && [ -f "$cache/lib/libonnxruntime_providers_openvino.so" ]; then
    exit 0
fi
say "fetching onnxruntime-openvino==$OV_ORT_VERSION from PyPI (about 84 MB)"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
arch=$(uname -m)
# The wheel is built per CPython version, but its libraries are the same in every one: when the
# local Python has no wheel, take CPython 3.12's.
python3 -m pip download -q --no-deps --only-binary=:all: -d "$tmp" \
    "onnxruntime-openvino==$OV_ORT_VERSION" 2>/dev/null ||
    python3 -m pip download -q --no-deps --only-binary=:all: -d "$tmp" \
        --python-version 3.12 --implementation cp \
        --platform "manylinux_2_28_$arch" --platform "manylinux_2_17_$arch" \
        "onnxruntime-openvino==$OV_ORT_VERSION"
wheel=$(ls "$tmp"/onnxruntime_openvino-*.whl)
rm -rf "$cache/lib.new"
mkdir -p "$cache/lib.new"
# The wheel stores each library under several names (libopenvino.so, .so.2541, .so.2025.4.1) as
# separate copies; the longest name is written, the others become symlinks to it.
python3 - "$wheel" "$cache/lib.new" <<'PY'
import os, sys, zipfile
wheel, dest = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    libs = [i for i in z.infolist()
            if i.filename.startswith("onnxruntime/capi/")
            and os.path.basename(i.filename).startswith("lib")
            and ".so" in os.path.basename(i.filename)]
    groups = {}
    for i in libs:
        groups.setdefault((i.CRC, i.file_size), []).append(i)
    for members in groups.values():
        members.sort(key=lambda i: len(i.filename), reverse=True)
        real = os.path.basename(members[0].filename)
        with z.open(members[0]) as src, open(os.path.join(dest, real), "wb") as out:
            out.write(src.read())
        for other in members[1:]:
            os.symlink(real, os.path.join(dest, os.path.basename(other.filename)))
PY
ln -sf "$OV_ORT_LIB" "$cache/lib.new/libonnxruntime.so"
rm -rf "$cache/lib"
mv "$cache/lib.new" "$cache/lib"
say "ONNX Runtime $OV_ORT_VERSION with OpenVINO installed in $cache/lib"
