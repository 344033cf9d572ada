#!/usr/bin/env bash
# Builds the load generator (release) and runs it against our broker and mosquitto.
# Extra arguments go to mqtt-load (see `mqtt-load --help`), e.g. --messages 100000 --idle 0.
# With LICHEN_BIN set, that program (`lichen`) is run as `$LICHEN_BIN broker --listen ...`;
# otherwise mqtt-load runs the same broker code through its own `broker` subcommand.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p lichen-mqtt-load
args=()
if [[ -n "${LICHEN_BIN:-}" ]]; then
  args+=(--lichen "$LICHEN_BIN")
fi
exec target/release/mqtt-load "${args[@]}" "$@"
