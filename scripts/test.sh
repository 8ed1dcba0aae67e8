#!/usr/bin/env bash
# All the tests (README "Run the tests"): setup, then lint, the host workspace's tests
# (unit, env conformance against gymnasium, firmware in QEMU, HIL episodes) and the
# firmware workspace's host-side tests and lint.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

step() { printf '\n=== %s\n' "$*"; }

step "setup"
scripts/setup.sh

step "format and lint"
cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings
(cd firmware && cargo fmt --all --check && cargo clippy --release -- -D warnings \
    && cargo clippy-f407 -- -D warnings && cargo clippy-host -- -D warnings)

step "firmware control loop (host unit tests)"
(cd firmware && cargo test-host)

step "host workspace tests"
cargo test --workspace
