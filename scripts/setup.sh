#!/usr/bin/env bash
# Idempotent setup of everything the project needs on a fresh machine (DESIGN §3):
#   - a Python venv with torch 2.11.0 (libtorch for tch), mujoco 3.17.0 (libmujoco and the
#     reference envs) and gymnasium 1.4.0 (task XMLs and reference envs);
#   - .deps/ (a link to the shared cache $FLAME_DEPS, default ~/.cache/flame-mcu) with
#     libtorch, mujoco-lib (libmujoco.so link), mujoco-assets and python, which
#     .cargo/config.toml points the builds at;
#   - qemu-system-arm (Debian), the thumbv7em-none-eabihf Rust target and flip-link (the
#     STM32F407 image's linker).
# A second run checks and finishes in seconds. Prints one line per missing prerequisite.
#
# `scripts/setup.sh --bench` sets up the lab bench only (`cargo build -p tools`: HIL runs,
# QEMU, size, inspect, log): mujoco and gymnasium (libmujoco and the task XMLs) without
# torch, no libtorch link, plus QEMU, the thumbv7em target, flip-link and a probe-rs hint. A later
# full setup adds torch to the same venv.
set -euo pipefail

MODE=full
case "${1:-}" in
    "") ;;
    --bench) MODE=bench ;;
    *) printf '[setup] error: unknown argument %s (usage: scripts/setup.sh [--bench])\n' "$1" >&2; exit 2 ;;
esac

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# CI may run with a minimal environment: fall back to the passwd home directory.
HOME="${HOME:-$(getent passwd "$(id -u)" | cut -d: -f6)}"
export HOME
DEPS="${FLAME_DEPS:-$HOME/.cache/flame-mcu}"
VENV="$DEPS/venv"
TORCH_VERSION=2.11.0
MUJOCO_VERSION=3.17.0
GYMNASIUM_VERSION=1.4.0

say() { printf '[setup] %s\n' "$*" >&2; }
die() { printf '[setup] error: %s\n' "$*" >&2; exit 1; }

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"
    elif command -v sudo >/dev/null; then sudo "$@"
    else die "need root to run '$*' (no sudo): install it by hand and re-run"; fi
}

# --- prerequisites -------------------------------------------------------------------
command -v cargo >/dev/null || die "cargo not found: install Rust with rustup (https://rustup.rs) and re-run"
command -v rustup >/dev/null || die "rustup not found: the thumbv7em target is installed with rustup"
PYTHON="${PYTHON:-python3}"
command -v "$PYTHON" >/dev/null || die "python3 not found: install Python >= 3.10 (e.g. apt-get install python3 python3-venv) and re-run"
"$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' \
    || die "python3 is $("$PYTHON" --version 2>&1); torch $TORCH_VERSION needs >= 3.10"
"$PYTHON" -c 'import venv, ensurepip' 2>/dev/null \
    || die "python3 has no venv/ensurepip module: apt-get install python3-venv and re-run"

# --- python venv ---------------------------------------------------------------------
mkdir -p "$DEPS"
if [ "$MODE" = full ]; then
    # torch for libtorch; gymnasium's [mujoco] extras for the reference envs of the
    # conformance tests.
    PACKAGES=("torch==$TORCH_VERSION" "mujoco==$MUJOCO_VERSION" "gymnasium[mujoco]==$GYMNASIUM_VERSION")
    WANT="{'torch': '$TORCH_VERSION', 'mujoco': '$MUJOCO_VERSION', 'gymnasium': '$GYMNASIUM_VERSION'}"
    # needs the [mujoco] extras (imageio, packaging)
    PROBE="import gymnasium.envs.mujoco.half_cheetah_v5"
    SIZE="~5 GB download, a few minutes"
else
    # libmujoco and the task XMLs only.
    PACKAGES=("mujoco==$MUJOCO_VERSION" "gymnasium==$GYMNASIUM_VERSION")
    WANT="{'mujoco': '$MUJOCO_VERSION', 'gymnasium': '$GYMNASIUM_VERSION'}"
    PROBE="pass"
    SIZE="~46 MB download, under a minute"
fi
versions_ok() {
    [ -x "$VENV/bin/python" ] && "$VENV/bin/python" - <<PY 2>/dev/null
import importlib.metadata as m, sys
ok = all(m.version(k).split("+")[0] == v for k, v in $WANT.items())
$PROBE
sys.exit(0 if ok else 1)
PY
}
if ! versions_ok; then
    say "venv $VENV: installing ${PACKAGES[*]} ($SIZE)"
    [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip \
        || die "pip could not reach the package index (PyPI): check the network or a PIP_INDEX_URL mirror"
    "$VENV/bin/python" -m pip install -q "${PACKAGES[@]}" \
        || die "pip install of ${PACKAGES[*]} failed (see above): check the network or PIP_INDEX_URL"
    versions_ok || die "venv $VENV still lacks the pinned versions after pip install"
fi

SITE="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
[ -f "$SITE/mujoco/libmujoco.so.$MUJOCO_VERSION" ] || die "mujoco wheel has no libmujoco.so.$MUJOCO_VERSION in $SITE/mujoco"
[ -d "$SITE/gymnasium/envs/mujoco/assets" ] || die "gymnasium wheel has no envs/mujoco/assets in $SITE"
if [ "$MODE" = full ]; then
    [ -f "$SITE/torch/lib/libtorch_cpu.so" ] || die "torch wheel has no lib/libtorch_cpu.so in $SITE/torch"
fi

mkdir -p "$DEPS/mujoco-lib"
ln -sfn "$SITE/mujoco/libmujoco.so.$MUJOCO_VERSION" "$DEPS/mujoco-lib/libmujoco.so.$MUJOCO_VERSION"
ln -sfn "libmujoco.so.$MUJOCO_VERSION" "$DEPS/mujoco-lib/libmujoco.so"
if [ "$MODE" = full ]; then
    ln -sfn "$SITE/torch" "$DEPS/libtorch"
fi
ln -sfn "$SITE/gymnasium/envs/mujoco/assets" "$DEPS/mujoco-assets"
# A wrapper, not a link: python started through a symlink outside the venv misses it.
rm -f "$DEPS/python"
printf '#!/bin/sh\nexec "%s" "$@"\n' "$VENV/bin/python" > "$DEPS/python"
chmod +x "$DEPS/python"
# The checkout's view of the cache (what .cargo/config.toml names).
if [ "$(readlink "$ROOT/.deps" 2>/dev/null || true)" != "$DEPS" ]; then
    rm -rf "$ROOT/.deps"
    ln -s "$DEPS" "$ROOT/.deps"
fi

# --- QEMU ----------------------------------------------------------------------------
if ! command -v qemu-system-arm >/dev/null; then
    command -v apt-get >/dev/null || die "qemu-system-arm not found and no apt-get: install QEMU >= 7.2 with the netduinoplus2 machine"
    say "installing qemu-system-arm (Debian)"
    as_root apt-get update -qq || die "apt-get update failed: check the network or the Debian mirror"
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq qemu-system-arm >/dev/null \
        || die "apt-get install qemu-system-arm failed"
fi
qemu-system-arm -machine help | grep -q netduinoplus2 || die "qemu-system-arm lacks the netduinoplus2 machine (need QEMU >= 5.2)"

# --- flip-link (the STM32F407 image's linker: stack below the statics) -------------------
if ! command -v flip-link >/dev/null; then
    say "installing flip-link (cargo install, ~10 s)"
    cargo install --locked --quiet flip-link@0.1.12 \
        || die "cargo install flip-link failed: check the network or the crates.io mirror"
    command -v flip-link >/dev/null || die "flip-link installed but not on PATH: add ~/.cargo/bin to PATH"
fi

# --- Rust target ---------------------------------------------------------------------
if ! rustup target list --installed | grep -qx thumbv7em-none-eabihf; then
    say "adding Rust target thumbv7em-none-eabihf"
    rustup target add thumbv7em-none-eabihf >/dev/null || die "rustup target add thumbv7em-none-eabihf failed"
fi

if [ "$MODE" = full ]; then
    say "ok: deps in $DEPS (venv torch $TORCH_VERSION, mujoco $MUJOCO_VERSION, gymnasium $GYMNASIUM_VERSION), qemu, thumbv7em, flip-link"
else
    command -v probe-rs >/dev/null \
        || say "note: probe-rs not found; QEMU needs nothing more, a real board does: cargo install probe-rs-tools --locked (see https://probe.rs)"
    say "ok (lab bench, no torch): deps in $DEPS (venv mujoco $MUJOCO_VERSION, gymnasium $GYMNASIUM_VERSION), qemu, thumbv7em, flip-link; build with: cargo build -p tools"
fi
