#!/usr/bin/env bash
# The main job, end to end on this machine (README "The two commands"):
#   setup -> build -> trainer train: a small FLAME-M policy for a few minutes
#   -> trainer export (blob v2, golden vectors, per-stage fidelity report)
#   -> firmware for QEMU netduinoplus2 with that blob -> host-in-the-loop HalfCheetah-v5
#   episode with a bit-exactness check at every step,
# then the shipped model (models/default.blob) through the same HIL path.
# Exits non-zero if any step fails or any device action differs from the host runtime.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
RUN="${FLAME_RUN:-runs/pipeline}"
ENV_ID="${FLAME_ENV:-HalfCheetah-v5}"
# Wall-time budget of the training step in seconds (the rest takes ~2 min once built).
TRAIN_SECONDS="${FLAME_TRAIN_SECONDS:-180}"

step() { printf '\n=== %s\n' "$*"; }

step "setup"
scripts/setup.sh
step "build (trainer, tools)"
cargo build --bins -p trainer -p tools
BIN=target/debug

step "trainer train: a small FLAME-M on $ENV_ID for ${TRAIN_SECONDS} s -> $RUN"
# The paper's algorithm at a demo size: 2x128 networks, K = 32 candidates, 16 particles,
# one env with a 2k-step warm-up, so that a 2-core machine makes ~40 updates/s.
rm -rf "$RUN"
"$BIN/trainer" train --algo flame-m --env "$ENV_ID" --seed 0 --steps 1000000 \
    --max-wall "$TRAIN_SECONDS" --num-envs 1 --learning-starts 2000 \
    --hidden 128,128 --critic-hidden 128,128 --candidates 32 --particles 16 \
    --eval-every 5000 --eval-episodes 5 --progress-every 15 --out "$RUN"

step "trainer export: blob + golden vectors + fidelity report"
"$BIN/trainer" export "$RUN" --out "$RUN/policy.blob" --episodes 3
"$BIN/tools" inspect "$RUN/policy.blob"

step "host-in-the-loop: $ENV_ID on the QEMU firmware, full episode"
"$BIN/tools" hil --qemu --policy "$RUN/policy.blob" --episodes 1 --float-run "$RUN" --report "$RUN/policy.hil.json"

if [ -f models/default.blob ]; then
    step "host-in-the-loop: the shipped model models/default.blob"
    "$BIN/tools" inspect models/default.blob
    "$BIN/tools" hil --qemu --policy models/default.blob --episodes 1 --report "$RUN/hil-shipped.json"
fi

step "results: this run beside the shipped model's runs"
"$BIN/trainer" results "$RUN" models/runs/hc-* --out "$RUN/results" | sed -n '/^## /,$p'

step "done: reports in $RUN/"
