#!/bin/sh
# npm run bench:peer: installs node-llama-cpp (for this script only, into .peer/, from the npm registry,
# whose platform packages carry llama.cpp's CPU builds) and runs `kvlab bench-peer` with any arguments given.
set -e
cd "$(dirname "$0")/.."
PEER_DIR="${KVLAB_PEER_DIR:-.peer}"
PEER_VERSION="${KVLAB_PEER_VERSION:-3.22.1}"
if [ ! -f "$PEER_DIR/node_modules/node-llama-cpp/package.json" ]; then
  mkdir -p "$PEER_DIR"
  [ -f "$PEER_DIR/package.json" ] || echo '{"private":true}' > "$PEER_DIR/package.json"
  echo "bench:peer: installing node-llama-cpp@$PEER_VERSION into $PEER_DIR" >&2
  npm install --prefix "$PEER_DIR" --no-audit --no-fund --ignore-scripts "node-llama-cpp@$PEER_VERSION" >&2
fi
exec node --import tsx src/cli/main.ts bench-peer --peer-dir "$PEER_DIR" "$@"
