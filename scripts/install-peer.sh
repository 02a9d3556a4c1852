#!/bin/sh
# Installs node-llama-cpp (from the npm registry, whose platform packages carry llama.cpp's CPU builds) into
# $KVLAB_PEER_DIR (default .peer/) unless it is there. Used by bench:peer and verify:arch only; nothing else
# in kvlab needs it.
set -e
cd "$(dirname "$0")/.."
PEER_DIR="${KVLAB_PEER_DIR:-.peer}"
PEER_VERSION="${KVLAB_PEER_VERSION:-3.22.1}"
if [ ! -f "$PEER_DIR/node_modules/node-llama-cpp/package.json" ]; then
  mkdir -p "$PEER_DIR"
  [ -f "$PEER_DIR/package.json" ] || echo '{"private":true}' > "$PEER_DIR/package.json"
  echo "installing node-llama-cpp@$PEER_VERSION into $PEER_DIR" >&2
  npm install --prefix "$PEER_DIR" --no-audit --no-fund --ignore-scripts "node-llama-cpp@$PEER_VERSION" >&2
fi
