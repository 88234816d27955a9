#!/usr/bin/env bash
# Installs what cbo needs on a fresh Debian 12 / Ubuntu 24.04 machine, and nothing that is there
# already: GStreamer (dev packages and the plugins that provide every element listed in
# scripts/gst-elements.tsv, each of which is then checked to exist), a Rust toolchain if missing
# or older than Cargo.toml's rust-version,
# and the ONNX Runtime shared library from the official `onnxruntime` PyPI wheel into
# .cache/onnxruntime/lib/. Idempotent and quick when everything is in place. Run as root or with
# sudo available. `scripts/setup.sh --openvino` (or `make setup-openvino`) also installs the ONNX
# Runtime build with the OpenVINO execution provider (scripts/setup-openvino.sh).
set -euo pipefail

ORT_VERSION=1.31.1
ORT_LIB=libonnxruntime.so.${ORT_VERSION}
here=$(cd "$(dirname "$0")/.." && pwd)
cache="$here/.cache/onnxruntime"

say() { printf '[setup] %s\n' "$*" >&2; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"
    elif command -v sudo >/dev/null 2>&1; then sudo "$@"
    else say "need root (or sudo) to run: $*"; exit 1
    fi
}

# Debian/Ubuntu packages: the GStreamer stack the plugin builds against, the RTSP server library
# the tests serve from, libjpeg-turbo for the offload JPEG path, PyGObject for the Python example,
# a font for the plots, plus the build tools; python3-venv and libpython3-dev (the shared
# libpython that Triton's Python backend stub loads) for the test Triton and MLServer
# (scripts/triton-venv.sh). The packages that provide the GStreamer *elements*
# the project uses are not listed here: they come from scripts/gst-elements.tsv (element, package),
# the one list of required elements, which is also checked element by element below.
packages=(
    pkg-config build-essential curl ca-certificates python3 python3-pip python3-venv libpython3-dev
    libgstreamer1.0-dev libgstreamer-plugins-base1.0-dev libgstreamer-plugins-bad1.0-dev
    libgstrtspserver-1.0-dev gstreamer1.0-tools
    python3-gi gir1.2-gstreamer-1.0 gir1.2-gst-plugins-base-1.0
    libturbojpeg0-dev fonts-dejavu-core
)
elements_tsv="$here/scripts/gst-elements.tsv"
# element -> package, in the file's order.
declare -A element_package=()
elements=()
while IFS=$'\t' read -r element package _; do
    case "$element" in ''|'#'*) continue ;; esac
    if [ -z "${package:-}" ]; then
        say "$elements_tsv: element '$element' names no package"; exit 1
    fi
    elements+=("$element")
    element_package[$element]=$package
    case " ${packages[*]} " in *" $package "*) ;; *) packages+=("$package") ;; esac
done <"$elements_tsv"

missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    say "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    as_root apt-get update -qq
    as_root apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The promise is elements, not packages: a package can be installed while the element is not
# there (another distribution splits plugins differently, a file was removed, a stale registry).
absent=()
for element in "${elements[@]}"; do
    gst-inspect-1.0 --exists "$element" 2>/dev/null || absent+=("$element")
done
if [ ${#absent[@]} -gt 0 ]; then
    for element in "${absent[@]}"; do
        say "missing GStreamer element '$element': install the package '${element_package[$element]}'" \
            "(apt-get install ${element_package[$element]}), or fix its line in scripts/gst-elements.tsv"
    done
    say "set-up incomplete: ${#absent[@]} GStreamer element(s) missing"
    exit 1
fi

# Rust: Cargo.toml's rust-version or newer. A cargo being there is not enough: Debian 12's own
# (apt's rustc) is 1.63. The Makefile puts ~/.cargo/bin first on PATH, so a rustup toolchain
# installed here is the one the build uses.
rust_needed=$(sed -n 's/^rust-version *= *"\(.*\)"/\1/p' "$here/Cargo.toml")
# Empty, not a failure, without a usable rustc (set -e and pipefail would end the script here).
rustc_version() { { rustc --version 2>/dev/null || true; } | awk '{print $2}'; }
rust_ok() {
    command -v cargo >/dev/null 2>&1 && command -v rustc >/dev/null 2>&1 &&
        printf '%s\n%s\n' "$rust_needed" "$(rustc_version)" | sort -V -C
}
[ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
if ! rust_ok; then
    found=$(rustc_version)
    if command -v rustup >/dev/null 2>&1; then
        say "Rust ${found:-missing}: installing the stable toolchain with rustup (need $rust_needed)"
        rustup toolchain install stable --profile minimal
        rustup default stable
    else
        say "Rust ${found:-missing}: installing a toolchain with rustup into ~/.cargo (need $rust_needed)"
        curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
        export PATH="$HOME/.cargo/bin:$PATH"
    fi
    if ! rust_ok; then
        say "still no rustc $rust_needed or newer (Cargo.toml's rust-version) after installing:" \
            "found ${found:-none}, now $(rustc_version) at $(command -v rustc || echo nowhere)"
        exit 1
    fi
fi

# ONNX Runtime: the shared library inside the official wheel (same build for every CPython tag).
if [ ! -f "$cache/lib/$ORT_LIB" ]; then
    say "fetching onnxruntime==$ORT_VERSION from PyPI"
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    arch=$(uname -m)
    python3 -m pip download -q --no-deps --only-binary=:all: -d "$tmp" "onnxruntime==$ORT_VERSION" 2>/dev/null ||
        python3 -m pip download -q --no-deps --only-binary=:all: -d "$tmp" \
            --python-version 3.12 --implementation cp \
            --platform "manylinux_2_28_$arch" --platform "manylinux_2_27_$arch" \
            --platform "manylinux_2_17_$arch" "onnxruntime==$ORT_VERSION"
    wheel=$(ls "$tmp"/onnxruntime-*.whl)
    mkdir -p "$cache/lib"
    python3 - "$wheel" "$cache/lib" <<'PY'
import sys, zipfile, os
wheel, dest = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        base = os.path.basename(name)
        if name.startswith("onnxruntime/capi/") and base.startswith("libonnxruntime"):
            with z.open(name) as src, open(os.path.join(dest, base), "wb") as out:
                out.write(src.read())
PY
    ln -sf "$ORT_LIB" "$cache/lib/libonnxruntime.so"
    say "ONNX Runtime $ORT_VERSION installed in $cache/lib"
fi

if [ "${1:-}" = "--openvino" ]; then
    bash "$here/scripts/setup-openvino.sh"
fi
