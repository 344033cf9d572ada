#!/usr/bin/env bash
# IPC pub/sub throughput and latency between components on a real `lichen core run` (release).
#
#   bench/ipc.sh [messages]        (default 20000 for Rust, a quarter of that for Python)
#   LICHEN_BIN=/path/to/lichen bench/ipc.sh   (measure another core build)
#
# Deploys bench.RustSub and bench.RustPub, two components (crates/ipc/examples/ipc_bench_pair.rs,
# lichen_ipc::IpcClient), and then bench.PySub and bench.PyPub (bench/ipc_py.py, the unmodified
# awsiotsdk GreengrassCoreIPCClientV2), one pair after the other so they do not compete for CPU,
# and prints what each measured: msgs/s counted at the subscriber (16
# publishes in flight; the Rust client also 64 and 256) and publish->event p50/p99 with one in
# flight, for 64 B and 8 KiB binary payloads. Also prints the in-process figures (no core).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
N=${1:-20000}
NPY=$(( N / 4 ))
PY=${LICHEN_PYTHON:-$REPO/.venv/bin/python}
# LICHEN_BIN: a core binary to measure instead of building this tree's (e.g. an older build).
[ -n "${LICHEN_BIN:-}" ] || cargo build -q --release -p lichen
cargo build -q --release -p lichen-ipc --example ipc_bench --example ipc_bench_pair
TARGET=${CARGO_TARGET_DIR:-$REPO/target}
LICHEN=${LICHEN_BIN:-$TARGET/release/lichen}
BENCH=$TARGET/release/examples/ipc_bench
PAIR=$TARGET/release/examples/ipc_bench_pair

WORK=$(mktemp -d /tmp/lichen-ipc-bench.XXXXXX)
CORE_PID=
cleanup() {
  if [ -n "$CORE_PID" ]; then kill "$CORE_PID" 2>/dev/null || true; wait "$CORE_PID" 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

mkdir -p "$WORK/recipes" "$WORK/artifacts"
ACL='"accessControl": {"aws.greengrass.ipc.pubsub": {"bench:pubsub:1": {"operations": ["*"], "resources": ["*"]}}}'
recipe() { # name run
  cat > "$WORK/recipes/$1.json" <<JSON
{"RecipeFormatVersion": "2020-01-25", "ComponentName": "$1", "ComponentVersion": "1.0.0",
 "ComponentConfiguration": {"DefaultConfiguration": {$ACL}},
 "Manifests": [{"Platform": {"os": "*"}, "Lifecycle": {"Run": "$2"}}]}
JSON
}
recipe bench.RustSub "$PAIR --subscriber $WORK $N"
recipe bench.RustPub "$PAIR --publisher $WORK $N"
recipe bench.PySub "$PY -u $REPO/bench/ipc_py.py --subscriber $WORK $NPY"
recipe bench.PyPub "$PY -u $REPO/bench/ipc_py.py --publisher $WORK $NPY"

LICHEN_LOG=warn "$LICHEN" core run --root "$WORK/root" > "$WORK/core.out" 2>&1 &
CORE_PID=$!
for _ in $(seq 300); do grep -q "ready in" "$WORK/core.out" 2>/dev/null && break; sleep 0.1; done

run_components() { # result name...
  local result=$1; shift
  local merges=() removes=()
  for c in "$@"; do merges+=(--merge "$c=1.0.0"); removes+=(--remove "$c"); done
  "$LICHEN" deployment create --root "$WORK/root" --recipe-dir "$WORK/recipes" --artifact-dir "$WORK/artifacts" \
    "${merges[@]}" --wait > /dev/null
  for _ in $(seq 1200); do [ -f "$result" ] && break; sleep 0.1; done
  [ -f "$result" ] || { echo "$* wrote no result; logs:"; for c in "$@"; do cat "$WORK/root/logs/$c.log" || true; done; exit 1; }
  "$LICHEN" deployment create --root "$WORK/root" "${removes[@]}" --wait > /dev/null
}
run_components "$WORK/rust.json" bench.RustSub bench.RustPub
run_components "$WORK/python.json" bench.PySub bench.PyPub

echo "== real core (release), $(nproc) CPUs; each client: a publisher and a subscriber component"
"$PY" - "$WORK/rust.json" "$WORK/python.json" <<'PYEOF'
import json, sys
for path in sys.argv[1:]:
    for r in json.load(open(path)):
        windows = "".join(f"  {w} in flight {v:.0f}" for w, v in r.get("msgs_per_s_by_in_flight", {}).items())
        print(f"{r['client']:>6} {r['payload']:>5} B: {r['msgs_per_s']:>9.0f} msgs/s ({r['received']}/{r['messages']})"
              f"  p50 {r['p50_us']:7.1f} us  p99 {r['p99_us']:7.1f} us" + (f"  [msgs/s:{windows}]" if windows else ""))
PYEOF
echo "== in process (no core), Rust client"
"$BENCH" "$N"
