#!/bin/sh
# npm run verify:arch: installs node-llama-cpp into .peer/ (scripts/install-peer.sh) and runs `kvlab verify-arch`
# with any arguments given; exits non-zero if any architecture disagrees with llama.cpp.
set -e
cd "$(dirname "$0")/.."
sh scripts/install-peer.sh
exec node --import tsx src/cli/main.ts verify-arch --peer-dir "${KVLAB_PEER_DIR:-.peer}" "$@"
