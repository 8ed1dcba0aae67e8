#!/usr/bin/env bash
# Long training runs on a GPU machine that has torch 2.11 (cu130) but no Rust toolchain
# (DESIGN §3): the trainer binary built on the workstation runs there on that machine's
# own libtorch.
#
#   scripts/gpu_train.sh pack              # on the workstation: stage .gpu/ (binary,
#                                          # libmujoco, task XMLs), then carry .gpu over
#   scripts/gpu_train.sh run WALL_S OUT    # on the GPU machine: FLAME-M, FLAME-R and SAC
#                                          # on HalfCheetah-v5 in parallel for WALL_S
#                                          # seconds each, export the flow policies, pack
#                                          # each run directory into OUT/<run>.tar.gz
#
# DEVICE (default cuda), SEED (default 0) and PYTHON (the one with torch, default
# python3) can be set; a run that dies within its
# first 60 s on cuda is restarted on the CPU so the session still yields a run.
set -euo pipefail
cd "$(dirname "$0")/.."

stage=.gpu

pack() {
    cargo build -p trainer
    rm -rf "$stage" && mkdir -p "$stage/lib" "$stage/assets"
    strip -o "$stage/trainer" target/debug/trainer
    cp -L .deps/mujoco-lib/libmujoco.so.3.17.0 "$stage/lib/"
    cp -L .deps/mujoco-assets/*.xml "$stage/assets/"
    grep -qx "/$stage/" .git/info/exclude 2>/dev/null || echo "/$stage/" >>.git/info/exclude
    du -sh "$stage"
}

run() {
    local wall=$1 out=$2
    local device=${DEVICE:-cuda} seed=${SEED:-0}
    local torch_lib
    torch_lib=$(${PYTHON:-python3} -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
    export LD_LIBRARY_PATH="$torch_lib:$PWD/$stage/lib"
    export FLAME_MUJOCO_ASSETS="$PWD/$stage/assets"
    local trainer="$PWD/$stage/trainer"
    mkdir -p "$out" runs
    "$trainer" devices | tee "$out/devices.txt"
    nvidia-smi --query-gpu=name,memory.total --format=csv,noheader >>"$out/devices.txt" 2>&1 || true

    declare -A pid
    start() { # algo device wall
        local dir="runs/gpu-$1-s$seed"
        rm -rf "$dir"
        "$trainer" train --algo "$1" --env HalfCheetah-v5 --seed "$seed" --device "$2" \
            --threads 4 --steps 1000000 --max-wall "$3" --eval-every 25000 \
            --checkpoint-every 50000 --progress-every 30 --out "$dir" \
            >"$dir.log" 2>&1 &
        pid[$1]=$!
    }
    for algo in flame-m flame-r sac; do start "$algo" "$device" "$wall"; done
    sleep 60
    for algo in flame-m flame-r sac; do
        if ! kill -0 "${pid[$algo]}" 2>/dev/null && [ ! -f "runs/gpu-$algo-s$seed/summary.json" ]; then
            echo "$algo died on $device:" && tail -5 "runs/gpu-$algo-s$seed.log"
            cp "runs/gpu-$algo-s$seed.log" "runs/gpu-$algo-s$seed.$device-failure.log"
            start "$algo" cpu $((wall - 60))
        fi
    done
    for algo in flame-m flame-r sac; do wait "${pid[$algo]}" || echo "$algo exited with $?"; done
    for algo in flame-m flame-r; do
        local dir="runs/gpu-$algo-s$seed"
        [ -f "$dir/policy.safetensors" ] && "$trainer" export "$dir" --out "$dir/policy.blob" \
            >"$dir/export.log" 2>&1 || echo "export of $algo failed: $(tail -2 "$dir/export.log")"
    done
    for algo in flame-m flame-r sac; do
        local dir="runs/gpu-$algo-s$seed"
        tail -4 "$dir.log" || true
        cp "$dir".*log "$dir/" 2>/dev/null || true
        tar -czf "$out/gpu-$algo-s$seed.tar.gz" --exclude=checkpoint --exclude=checkpoint.old \
            --exclude=checkpoint.tmp -C runs "gpu-$algo-s$seed"
    done
    ls -la "$out"
}

case "${1:-}" in
pack) pack ;;
run) run "${2:?wall seconds}" "${3:?output directory}" ;;
*) echo "usage: $0 pack | run WALL_S OUT" >&2 && exit 2 ;;
esac
