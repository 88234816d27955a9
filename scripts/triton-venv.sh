#!/usr/bin/env bash
# Installs a real Triton Inference Server for the tests of `cboserver --backend grpc://` into
# .cache/triton-venv: the PyPI wheel `nvidia-pytriton` bundles `tritonserver` (2.51) with its Python
# backend. Installed with --no-deps (its own dependencies pull a CUDA stack the tests do not need),
# plus numpy<2 (the Python backend's stub is built against numpy 1) and onnxruntime (the test model
# is a Python-backend model.py that runs the ONNX server model with it: the wheel has no ONNX
# Runtime backend). Idempotent and quick once done; prints the venv's path on stdout.
#
# The venv uses the system's /usr/bin/python3 (3.11 on Debian 12): the wheel ships a backend
# stub per Python version, linked against that version's shared libpython, which scripts/setup.sh
# installs (libpython3-dev) along with python3-venv.
set -euo pipefail

PYTRITON_VERSION=0.7.0
# The ONNX Runtime of the test model: the version cbo itself loads (scripts/setup.sh), so both
# backends compute the same scores.
ORT_VERSION=1.31.1
here=$(cd "$(dirname "$0")/.." && pwd)
venv="$here/.cache/triton-venv"
stamp="$venv/.cbo-installed-$PYTRITON_VERSION-ort$ORT_VERSION"

say() { printf '[triton-venv] %s\n' "$*" >&2; }

if [ -f "$stamp" ]; then
    echo "$venv"
    exit 0
fi

python=/usr/bin/python3
[ -x "$python" ] || python=$(command -v python3)
version=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
libdir=$("$python" -c 'import sysconfig; print(sysconfig.get_config_var("LIBDIR"))')
ldlib=$("$python" -c 'import sysconfig; print(sysconfig.get_config_var("LDLIBRARY"))')
if ! ls "$libdir"/libpython"$version".so* >/dev/null 2>&1; then
    say "$python has no shared libpython$version in $libdir (the Python backend stub needs it);" \
        "on Debian/Ubuntu: apt-get install libpython3-dev (scripts/setup.sh does)"
    exit 1
fi

rm -rf "$venv"
say "creating $venv with $python ($version, $ldlib)"
"$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)
say "installing nvidia-pytriton==$PYTRITON_VERSION (no deps), numpy<2, onnxruntime==$ORT_VERSION"
"${pip[@]}" install --no-warn-conflicts --no-deps "nvidia-pytriton==$PYTRITON_VERSION"
"${pip[@]}" install --no-warn-conflicts "numpy<2" "onnxruntime==$ORT_VERSION"

# The Python backend looks for its stub beside itself: the wheel keeps one per Python version.
# Located without importing pytriton (its client side needs the dependencies left out).
tritonroot=$("$venv/bin/python" -c 'import importlib.util as u, os; print(os.path.join(u.find_spec("pytriton").submodule_search_locations[0], "tritonserver"))')
stub="$tritonroot/python_backend_stubs/$version/triton_python_backend_stub"
if [ ! -x "$stub" ]; then
    say "no Python backend stub for Python $version in $tritonroot/python_backend_stubs"
    exit 1
fi
cp "$stub" "$tritonroot/backends/python/triton_python_backend_stub"
touch "$stamp"
say "Triton installed: $tritonroot/bin/tritonserver"
echo "$venv"
