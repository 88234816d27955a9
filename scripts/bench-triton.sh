#!/usr/bin/env bash
# `cbo loadgen` against cboserver -> Triton and against cboserver --backend local, same clients,
# same run, alternating: the numbers of docs/deploy.md ("Measured"). Needs `make build` and the
# test Triton (scripts/triton-venv.sh). Everything listens on 127.0.0.1 only.
#   scripts/bench-triton.sh [CLIENTS] [SECONDS] [ROUNDS]
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
clients=${1:-8}
seconds=${2:-15}
rounds=${3:-2}
venv=$(bash "$here/scripts/triton-venv.sh")
py="$venv/bin/python"
site=$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
libdir=$("$py" -c 'import sysconfig; print(sysconfig.get_config_var("LIBDIR"))')
triton="$site/pytriton/tritonserver"
bin="$here/target/release"
work=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_line() { # FILE TEXT
    for _ in $(seq 600); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done
    echo "timed out waiting for '$2' in $1" >&2; cat "$1" >&2; exit 1
}

model="$work/repo/efficientnet-lite2"
mkdir -p "$model/1"
cp "$here/tests/triton/efficientnet-lite2/config.pbtxt" "$model/"
cp "$here/tests/triton/efficientnet-lite2/1/model.py" "$model/1/"
ln -s "$here/models/efficientnet-lite2-fp32-260.onnx" "$model/1/model.onnx"
grpc_port=$(free_port)
PATH="$venv/bin:$PATH" LD_LIBRARY_PATH="$libdir" PYTHONPATH="$site" \
    "$triton/bin/tritonserver" --model-repository="$work/repo" \
    --backend-directory="$triton/backends" --model-control-mode=explicit \
    --load-model=efficientnet-lite2 --allow-http=false --allow-metrics=false \
    --grpc-address=127.0.0.1 --grpc-port="$grpc_port" \
    --backend-config=python,shm-region-prefix-name="cbo-bench-$$-" >"$work/triton.log" 2>&1 &
pids+=($!)
wait_line "$work/triton.log" "Started GRPCInferenceService"

start_server() { # NAME ARGS... (not in a subshell: its pid must reach the cleanup)
    local name=$1; shift
    "$bin/cboserver" --listen 127.0.0.1:0 --self-signed "$work/tls" --max-batch 8 "$@" \
        >"$work/$name.out" 2>"$work/$name.err" &
    pids+=($!)
    wait_line "$work/$name.out" "listening on"
}
start_server grpc --backend "grpc://127.0.0.1:$grpc_port" --backend-model efficientnet-lite2
start_server local
grpc_addr=$(sed -n 's/^listening on //p' "$work/grpc.out")
local_addr=$(sed -n 's/^listening on //p' "$work/local.out")

for round in $(seq "$rounds"); do
    for name in local grpc; do
        addr=$local_addr; [ "$name" = grpc ] && addr=$grpc_addr
        "$bin/cbo" loadgen --server "$addr" --server-cert "$work/tls/cert.pem" \
            --clients "$clients" --seconds "$seconds" --no-baseline --json |
            "$py" -c 'import json,sys; r=json.load(sys.stdin); print(json.dumps({"backend": sys.argv[1], "round": int(sys.argv[2]), "answers_per_s": round(r["frames_per_s"],1), "p50_ms": round(r["latency_ms_p50"],1), "p99_ms": round(r["latency_ms_p99"],1), "errors": r["errors"], "batch_mean": round(r["server_batch_mean"],2)}))' "$name" "$round"
    done
done
