#!/bin/sh
# Seed the blob target's corpus with the committed blobs (run from runtime/).
set -e
here=$(dirname "$0")
root="$here/../.."
mkdir -p "$here/corpus/blob" "$here/corpus/wire"
cp "$root/models/default.blob" "$here/corpus/blob/default.blob"
cp "$root/firmware/control/tests/data/fixture-17x6.blob" "$here/corpus/blob/fixture-17x6.blob"
# Inputs that once failed (kept so every run re-checks them).
cp "$here"/regressions/blob/* "$here/corpus/blob/"
