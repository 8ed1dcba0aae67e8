#!/usr/bin/env bash
# Long training runs on a GPU machine that has torch 2.11 (cu130) but no Rust toolchain
# (DESIGN §3): the trainer binary built on the workstation runs there on that machine's
# own libtorch.
#
#   scripts/gpu_train.sh pack              # on the workstation: stage .gpu/ (binary,
#                                          # libmujoco, task XMLs), then carry .gpu over
#   scripts/gpu_train.sh run WALL_S OUT    # on the GPU machine: the RUNS on HalfCheetah-v5
#                                          # in parallel for WALL_S seconds each, export
#                                          # the flow policies, pack each run directory
#                                          # into OUT/<run>.tar.gz
#   scripts/gpu_train.sh graphs OUT        # on the GPU machine (~5 min): CUDA graphs and
#                                          # lanes — the self-checks of `trainer devices`,
#                                          # `trainer bench` of SAC and FLAME-M eager and
#                                          # with --cuda-graph for one seed and for five,
#                                          # one short run each way whose curves should
#                                          # agree, and a two-seed group whose seed 1 must
#                                          # equal seed 1 alone; all output in OUT/
#
# RUNS lists the runs as ALGO:SEED[:FLAG,VALUE,...] (default "flame-m:0 flame-r:0 sac:0");
# the flags go to `trainer train` and are named in the run directory, e.g.
# RUNS="flame-m:1 flame-m:0:--q-grad-weight,0" gives runs/gpu-flame-m-s1 and
# runs/gpu-flame-m-s0-q-grad-weight-0. SEED may be a list, a seed group in one process
# (`--seeds`): RUNS="flame-m:0,1,2,3,4:--cuda-graph" gives runs/gpu-flame-m-s0-1-2-3-4-
# cuda-graph with seed-0/ … seed-4/ inside. DEVICE (default cuda) and PYTHON (the one with
# torch, default python3) can be set; a run that dies within its first 60 s on cuda is
# restarted on the CPU so the session still yields a run.
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

# On the GPU machine: the staged binary on that machine's own torch; sets $trainer.
use_staged_trainer() {
    local torch_lib
    torch_lib=$(${PYTHON:-python3} -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
    export LD_LIBRARY_PATH="$torch_lib:$PWD/$stage/lib"
    export FLAME_MUJOCO_ASSETS="$PWD/$stage/assets"
    trainer="$PWD/$stage/trainer"
}

run() {
    local wall=$1 out=$2
    local device=${DEVICE:-cuda}
    use_staged_trainer
    mkdir -p "$out" runs
    "$trainer" devices | tee "$out/devices.txt"
    nvidia-smi --query-gpu=name,memory.total --format=csv,noheader >>"$out/devices.txt" 2>&1 || true

    local -a names=() pids=() args=()
    local spec algo seed flags name
    # start INDEX DEVICE WALL: (re)start run INDEX of names/args.
    start() {
        local dir="runs/${names[$1]}"
        rm -rf "$dir"
        # shellcheck disable=SC2086 # args holds the run's flags, split on purpose
        "$trainer" train ${args[$1]} --env HalfCheetah-v5 --device "$2" \
            --threads 4 --steps 1000000 --max-wall "$3" --eval-every 25000 \
            --checkpoint-every 50000 --progress-every 30 --out "$dir" \
            >"$dir.log" 2>&1 &
        pids[$1]=$!
    }
    for spec in ${RUNS:-flame-m:0 flame-r:0 sac:0}; do
        IFS=: read -r algo seed flags <<<"$spec"
        name="gpu-$algo-s${seed//,/-}${flags:+-$(sed "s/--//g; s/,/-/g" <<<"$flags")}"
        names+=("$name")
        if [ "${seed#*,}" != "$seed" ]; then
            args+=("--algo $algo --seeds $seed ${flags//,/ }")
        else
            args+=("--algo $algo --seed $seed ${flags//,/ }")
        fi
    done
    for i in "${!names[@]}"; do start "$i" "$device" "$wall"; done
    sleep 60
    for i in "${!names[@]}"; do
        # A run (or any seed of a group) that finished has its summary.json.
        if ! kill -0 "${pids[$i]}" 2>/dev/null \
            && ! compgen -G "runs/${names[$i]}/summary.json" >/dev/null \
            && ! compgen -G "runs/${names[$i]}/seed-*/summary.json" >/dev/null; then
            echo "${names[$i]} died on $device:" && tail -5 "runs/${names[$i]}.log"
            cp "runs/${names[$i]}.log" "runs/${names[$i]}.$device-failure.log"
            start "$i" cpu $((wall - 60))
        fi
    done
    for i in "${!names[@]}"; do wait "${pids[$i]}" || echo "${names[$i]} exited with $?"; done
    for name in "${names[@]}"; do
        local dir="runs/$name" seed_dir
        for seed_dir in "$dir" "$dir"/seed-*; do
            if [ "${name#gpu-sac}" = "$name" ] && [ -f "$seed_dir/policy.safetensors" ]; then
                "$trainer" export "$seed_dir" --out "$seed_dir/policy.blob" >"$seed_dir/export.log" 2>&1 \
                    || echo "export of $seed_dir failed: $(tail -2 "$seed_dir/export.log")"
            fi
        done
        tail -4 "$dir.log" || true
        cp "$dir".*log "$dir/" 2>/dev/null || true
        tar -czf "$out/$name.tar.gz" --exclude=checkpoint --exclude=checkpoint.old \
            --exclude=checkpoint.tmp -C runs "$name"
    done
    ls -la "$out"
}

# The device checks of `--cuda-graph` and `--seeds` (issue 18), in one call: do a graph
# and the lanes record and replay, how fast are the updates eager and replayed, for one
# seed and for five in one process, does a replayed run learn like the eager one (same
# seed; the same numbers up to kernel choice), and is seed 1 of a two-seed group the
# single run of seed 1. DEVICE=cpu runs the eager half on the CPU (a dry run of the
# script itself; BENCH_UPDATES and IP_STEPS shorten it).
graphs() {
    local out=$1
    local device=${DEVICE:-cuda}
    local -a modes=("" --cuda-graph)
    [ "$device" = cpu ] && modes=("")
    use_staged_trainer
    mkdir -p "$out"
    "$trainer" devices | tee "$out/devices.txt"
    local mode seeds
    for seeds in 1 5; do
        for mode in "${modes[@]}"; do
            SECONDS=0
            timeout 150 "$trainer" bench --device "$device" --algo sac,flame-m \
                --updates "${BENCH_UPDATES:-300}" --loop-steps 300 --seeds $seeds $mode 2>&1 | tee -a "$out/bench.txt" \
                || echo "bench --seeds $seeds $mode failed: $?"
            echo "(bench --seeds $seeds $mode: ${SECONDS}s)"
        done
    done
    # ip_run DIR FLAGS...: a short FLAME-M InvertedPendulum run.
    ip_run() {
        local dir=$1
        shift
        rm -rf "$dir"
        timeout 150 "$trainer" train --algo flame-m --env InvertedPendulum-v5 --device "$device" \
            --steps "${IP_STEPS:-3000}" --num-envs 1 --learning-starts 1000 --eval-every 1000 \
            --eval-episodes 5 --policy-frequency 1 --candidates 16 --particles 8 \
            --progress-every 0 --out "$dir" "$@" >"$dir.log" 2>&1 || echo "run $* failed: $?"
    }
    for mode in "${modes[@]}"; do
        ip_run "$out/ip-flame-m${mode:+-graph}" --seed 1 $mode
        grep "eval @" "$out/ip-flame-m${mode:+-graph}.log" || tail -5 "$out/ip-flame-m${mode:+-graph}.log"
    done
    mode=${modes[-1]}
    ip_run "$out/ip-group${mode:+-graph}" --seeds 0,1 $mode
    # Seed 1 of the group against seed 1 alone, both run the same way: every evaluation
    # row but its timings.
    ${PYTHON:-python3} - "$out/ip-group${mode:+-graph}/seed-1/metrics.jsonl" \
        "$out/ip-flame-m${mode:+-graph}/metrics.jsonl" <<'PY' | tee "$out/group-vs-single.txt"
import json, sys
def rows(path):
    timing = ("wall_s", "updates_per_s", "env_steps_per_s")
    return [{k: v for k, v in json.loads(l).items() if k not in timing} for l in open(path)]
group, single = (rows(p) for p in sys.argv[1:3])
same = group == single
print(f"seed 1 of the group {'equals' if same else 'differs from'} seed 1 alone "
      f"({len(group)} and {len(single)} evaluations)")
if not same:
    for g, s in zip(group, single):
        if g != s:
            print("first difference at step", g.get("step"), ":", g, "vs", s)
            break
PY
}

case "${1:-}" in
pack) pack ;;
run) run "${2:?wall seconds}" "${3:?output directory}" ;;
graphs) graphs "${2:?output directory}" ;;
*) echo "usage: $0 pack | run WALL_S OUT | graphs OUT" >&2 && exit 2 ;;
esac
