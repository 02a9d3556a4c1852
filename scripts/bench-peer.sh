#!/bin/sh
# npm run bench:peer: installs node-llama-cpp into .peer/ (scripts/install-peer.sh) and runs `kvlab bench-peer`
# with any arguments given.
set -e
cd "$(dirname "$0")/.."
sh scripts/install-peer.sh
exec node --import tsx src/cli/main.ts bench-peer --peer-dir "${KVLAB_PEER_DIR:-.peer}" "$@"
