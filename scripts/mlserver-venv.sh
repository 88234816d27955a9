#!/usr/bin/env bash
# Installs MLServer (Seldon's Open Inference Protocol server, PyPI `mlserver`) into
# .cache/mlserver-venv for the second protocol test of `cboserver --backend grpc://`
# (tests/triton.rs): a different implementation of the same gRPC API than Triton. The test model
# is a small custom runtime (tests/mlserver/) that runs the ONNX server model with onnxruntime,
# pinned to the version cbo itself loads. Idempotent; prints the venv's path on stdout.
set -euo pipefail

MLSERVER_VERSION=1.7.1
ORT_VERSION=1.31.1
here=$(cd "$(dirname "$0")/.." && pwd)
venv="$here/.cache/mlserver-venv"
stamp="$venv/.cbo-installed-$MLSERVER_VERSION-ort$ORT_VERSION"

say() { printf '[mlserver-venv] %s\n' "$*" >&2; }

# A venv hard-codes its own path in its scripts' `#!` lines: one made under another path (a
# moved or re-cloned checkout) is installed again.
entry_interpreter() { head -1 "$venv/bin/mlserver" 2>/dev/null | sed 's/^#!//'; }
if [ -f "$stamp" ] && [ -x "$(entry_interpreter)" ]; then
    echo "$venv"
    exit 0
fi
python=/usr/bin/python3
[ -x "$python" ] || python=$(command -v python3)
rm -rf "$venv"
say "creating $venv; installing mlserver==$MLSERVER_VERSION, numpy<2, onnxruntime==$ORT_VERSION"
"$python" -m venv "$venv"
"$venv/bin/python" -m pip --disable-pip-version-check -q install \
    "mlserver==$MLSERVER_VERSION" "numpy<2" "onnxruntime==$ORT_VERSION"
touch "$stamp"
echo "$venv"
