#!/bin/bash
# Runs inside `unshare --mount --pid --fork --mount-proc` (see install_ns.sh): a core whose cloud
# endpoint cannot be reached updates itself; the new core does not reach the cloud within
# lichen.nucleusUpdate.connectTimeoutSeconds, gives up, the loader goes back to the old core, and
# the old core (which itself runs on without the cloud: the bound is only for a switched core)
# reports the deployment FAILED with that cause. Usage: core_unreachable_ns.sh LICHEN_BIN
set -euo pipefail
B=$1
fail() { echo "FAIL: $*"; echo "--- loader.log"; tail -30 "$R/logs/loader.log" 2>/dev/null; echo "--- lichen.log"; tail -40 "$R/logs/lichen.log" 2>/dev/null; exit 1; }
wait_for() {
  local n=$(( $1 * 5 )) what=$2; shift 2
  for _ in $(seq "$n"); do if "$@" >/dev/null 2>&1; then return 0; fi; sleep 0.2; done
  fail "timed out waiting for $what"
}
E=$(mktemp -d); mount -t tmpfs tmpfs "$E"; cp -a /etc/. "$E"/; mount --bind "$E" /etc
W=$(mktemp -d); mount -t tmpfs tmpfs "$W"
R=$W/gg/v2

# Real credentials and an endpoint nothing listens on: the link tries, and is refused.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN=unreachable \
  -days 1 -keyout "$W/key.pem" -out "$W/cert.pem" 2>/dev/null
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cat > "$W/config.yaml" <<C
system:
  thingName: unreachable-core
  certificateFilePath: $W/cert.pem
  privateKeyPath: $W/key.pem
  rootCaPath: $W/cert.pem
services:
  aws.greengrass.Nucleus:
    configuration:
      iotDataEndpoint: 127.0.0.1
      mqtt:
        port: $PORT
      lichen:
        nucleusUpdate:
          connectTimeoutSeconds: 3
C
mkdir -p "$W/r" "$W/a/aws.greengrass.Nucleus/2.14.1"
cp "$B" "$W/a/aws.greengrass.Nucleus/2.14.1/lichen"
cat > "$W/r/nucleus.yaml" <<R
RecipeFormatVersion: '2020-01-25'
ComponentName: aws.greengrass.Nucleus
ComponentVersion: '2.14.1'
ComponentType: aws.greengrass.nucleus
Manifests:
  - Platform:
      os: linux
    Artifacts:
      - Uri: s3://fleet/aws.greengrass.Nucleus/2.14.1/lichen
        Permission:
          Read: OWNER
          Execute: OWNER
R

"$B" core install --root "$R" --init none --config "$W/config.yaml" >/dev/null
wait_for 60 "core ready" "$B" component list --root "$R"
grep -q "127.0.0.1" "$R/config/effectiveConfig.yaml" || fail "endpoint not configured"

echo "== a new core that cannot reach the cloud is rolled back"
ID=$("$B" deployment create --root "$R" --recipe-dir "$W/r" --artifact-dir "$W/a" \
  --merge "aws.greengrass.Nucleus=2.14.1" | sed -n 's/.*Deployment Id: *//p')
[ -n "$ID" ] || fail "no deployment id"
S=""
for _ in $(seq 900); do
  S=$("$B" deployment status --root "$R" "$ID" --json 2>/dev/null || true)
  if [ -n "$S" ] && ! grep -qE '"status": *"(IN_PROGRESS|QUEUED)"' <<<"$S"; then break; fi
  S=""; sleep 0.2
done
[ -n "$S" ] || fail "deployment $ID did not end"
grep -q '"FAILED"' <<<"$S" || fail "the update did not fail: $S"
grep -q 'did not reach the cloud' <<<"$S" || fail "cause not reported: $S"
grep -q 'within 3 s' <<<"$S" || fail "bound not named: $S"
[ "$(readlink "$R/alts/current")" = init ] || fail "not back on the previous core: $(readlink "$R/alts/current")"
[ "$(readlink "$R/alts/broken")" = nucleus-2.14.1 ] || fail "alts/broken is $(readlink "$R/alts/broken" || true)"
grep -q "gave up" "$R/logs/loader.log" || fail "the loader did not go back at the core's request"
ps -eo args | grep -q "^$R/alts/current/bin/lichen core run" || fail "core not running from alts/current"
# The old core is not bound: it keeps running offline past the new core's bound.
sleep 4
"$B" component list --root "$R" >/dev/null || fail "the old core stopped"
"$B" core uninstall --root "$R" >/dev/null
echo "ALL OK"
