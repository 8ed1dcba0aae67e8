#!/usr/bin/env bash
# The main job, end to end on this machine (README "Run the pipeline"):
#   setup -> build -> trainer init (policy + normalizer + calibration states)
#   -> trainer export (int8 blob, golden vectors, fidelity report)
#   -> firmware for QEMU netduinoplus2 with that blob -> host-in-the-loop HalfCheetah-v5
#   episode with a bit-exactness check at every step,
# then the shipped model (models/default.blob) through the same HIL path.
# Exits non-zero if any step fails or any device action differs from the host runtime.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
RUN="${FLAME_RUN:-runs/pipeline}"
ENV_ID="${FLAME_ENV:-HalfCheetah-v5}"

step() { printf '\n=== %s\n' "$*"; }

step "setup"
scripts/setup.sh
step "build (trainer, tools)"
cargo build --bins -p trainer -p tools
BIN=target/debug

step "trainer init: FLAME-M policy for $ENV_ID -> $RUN"
rm -rf "$RUN"
"$BIN/trainer" init --algo flame-m --env "$ENV_ID" --seed 0 --states 5000 --out "$RUN"

step "trainer export: int8 blob + golden vectors + fidelity report"
"$BIN/trainer" export "$RUN" --out "$RUN/policy.blob" --episodes 3
"$BIN/tools" inspect "$RUN/policy.blob"

step "host-in-the-loop: $ENV_ID on the QEMU firmware, full episode"
"$BIN/tools" hil --qemu --policy "$RUN/policy.blob" --episodes 1 --float-run "$RUN" --report "$RUN/hil.json"

if [ -f models/default.blob ]; then
    step "host-in-the-loop: the shipped model models/default.blob"
    "$BIN/tools" inspect models/default.blob
    "$BIN/tools" hil --qemu --policy models/default.blob --episodes 1 --report "$RUN/hil-shipped.json"
fi
step "done: reports in $RUN/"
