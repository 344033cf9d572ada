#!/bin/bash
# Runs inside `unshare --mount --pid --fork --mount-proc` (see install_ns.sh): the core installed
# with its loader updates itself through a deployment of aws.greengrass.Nucleus, falls back from a
# core that cannot start, and survives kill -9 during a switch. Usage: core_update_ns.sh LICHEN_BIN
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

# aws.greengrass.Nucleus VERSION whose `lichen` artifact is the file FROM.
nucleus() {
  local v=$1 from=$2
  mkdir -p "$W/r$v" "$W/a/aws.greengrass.Nucleus/$v"
  cp "$from" "$W/a/aws.greengrass.Nucleus/$v/lichen"
  cat > "$W/r$v/nucleus.yaml" <<R
RecipeFormatVersion: '2020-01-25'
ComponentName: aws.greengrass.Nucleus
ComponentVersion: '$v'
ComponentType: aws.greengrass.nucleus
Manifests:
  - Platform:
      os: linux
    Artifacts:
      - Uri: s3://fleet/aws.greengrass.Nucleus/$v/lichen
        Permission:
          Read: OWNER
          Execute: OWNER
R
}
# Deploys aws.greengrass.Nucleus=VERSION; prints the deployment id.
deploy() {
  "$B" deployment create --root "$R" --recipe-dir "$W/r$1" --artifact-dir "$W/a" \
    --merge "aws.greengrass.Nucleus=$1" | sed -n 's/.*Deployment Id: *//p'
}
# Waits for deployment ID to end; prints its status JSON.
settle() {
  local id=$1 out
  for _ in $(seq "${SETTLE_TICKS:-900}"); do
    out=$("$B" deployment status --root "$R" "$id" --json 2>/dev/null || true)
    if [ -n "$out" ] && ! grep -qE '"status": *"(IN_PROGRESS|QUEUED)"' <<<"$out"; then echo "$out"; return 0; fi
    sleep 0.2
  done
  fail "deployment $id did not end"
}

"$B" core install --root "$R" --init none >/dev/null
wait_for 60 "core ready" "$B" component list --root "$R"

echo "== a good new core takes over"
nucleus 2.14.1 "$B"
ID=$(deploy 2.14.1); [ -n "$ID" ] || fail "no deployment id"
S=$(settle "$ID")
grep -q '"SUCCEEDED"' <<<"$S" || fail "update: $S"
[ "$(readlink "$R/alts/current")" = nucleus-2.14.1 ] || fail "alts/current is $(readlink "$R/alts/current")"
[ "$(readlink "$R/alts/old")" = init ] || fail "alts/old is $(readlink "$R/alts/old")"
[ ! -e "$R/alts/current/unconfirmed" ] || fail "the new core (no cloud configured) is still unconfirmed"
ps -eo args | grep -q "^$R/alts/current/bin/lichen core run" || fail "core not running from alts/current"
"$B" core effective-config --root "$R" | grep -A3 'aws.greengrass.Nucleus:' | grep -q "2.14.1" || fail "nucleus version not committed"

echo "== a new core that exits at start is rolled back"
printf '#!/bin/sh\necho broken core >&2\nexit 1\n' > "$W/broken"; chmod +x "$W/broken"
nucleus 2.14.2 "$W/broken"
ID=$(deploy 2.14.2)
S=$(settle "$ID")
grep -q '"FAILED"' <<<"$S" || fail "broken update did not fail: $S"
grep -q 'failed to start' <<<"$S" || fail "cause not reported: $S"
[ "$(readlink "$R/alts/current")" = nucleus-2.14.1 ] || fail "not back on the previous core"
[ "$(readlink "$R/alts/broken")" = nucleus-2.14.2 ] || fail "alts/broken is $(readlink "$R/alts/broken" || true)"

echo "== a component failing after the switch rolls back the components and the core (ROLLBACK)"
nucleus 2.14.4 "$B"
cat > "$W/r2.14.4/bad.yaml" <<R
RecipeFormatVersion: '2020-01-25'
ComponentName: test.Bad
ComponentVersion: '1.0.0'
Manifests:
  - Platform:
      os: '*'
    Lifecycle:
      Install: "echo bad >> $W/bad_runs; exit 1"
      Run: "exec sleep 1000"
R
ID=$("$B" deployment create --root "$R" --recipe-dir "$W/r2.14.4" --artifact-dir "$W/a" \
  --merge "aws.greengrass.Nucleus=2.14.4" --merge test.Bad=1.0.0 --failure-handling-policy ROLLBACK \
  | sed -n 's/.*Deployment Id: *//p')
S=$(settle "$ID")
grep -q '"FAILED_ROLLBACK_COMPLETE"' <<<"$S" || fail "failed update not rolled back: $S"
grep -q "core binary was rolled back too" <<<"$S" || fail "binary rollback not reported: $S"
test -s "$W/bad_runs" || fail "the failing component never ran"
wait_for 60 "the core back on nucleus-2.14.1" bash -c "[ \"\$(readlink '$R/alts/current')\" = nucleus-2.14.1 ] && ps -eo args | grep -q '^$R/alts/current/bin/lichen core run'"
[ "$(readlink "$R/alts/broken")" = nucleus-2.14.4 ] || fail "alts/broken is $(readlink "$R/alts/broken" || true)"
wait_for 60 "the old core serving" "$B" component list --root "$R"
"$B" component list --root "$R" | grep -q test.Bad && fail "test.Bad survived the rollback"
grep -q "gave up" "$R/logs/loader.log" || fail "the loader did not go back"

echo "== kill -9 during the switch"
nucleus 2.14.3 "$B"
ID=$(deploy 2.14.3)
wait_for 60 "the update staged" bash -c "test -L '$R/alts/new' || [ \"\$(readlink '$R/alts/current')\" = nucleus-2.14.3 ]"
# [l]: the pattern must not match the shell that runs pgrep with it.
PAT="$R/alts/[^ ]*/[l]ichen core"
pkill -KILL -f "$PAT" || true
wait_for 30 "everything killed" bash -c "! pgrep -f '$PAT'"
setsid "$R/alts/current/bin/lichen" core loader --root "$R" >>"$R/logs/loader.log" 2>&1 </dev/null &
S=$(settle "$ID")
CUR=$(readlink "$R/alts/current")
case "$CUR" in nucleus-2.14.1|nucleus-2.14.3) ;; *) fail "came back on $CUR";; esac
if [ "$CUR" = nucleus-2.14.3 ]; then grep -q '"SUCCEEDED"' <<<"$S" || fail "on the new core but $S"; fi
echo "came back on $CUR: $(grep -o '"status": *"[A-Z_]*"' <<<"$S" | head -1)"
echo "== a bootstrap step that asks for a restart goes through the loader"
mkdir -p "$W/rboot"
cat > "$W/rboot/boot.yaml" <<R
RecipeFormatVersion: '2020-01-25'
ComponentName: test.Boot
ComponentVersion: '1.0.0'
Manifests:
  - Platform:
      os: '*'
    Lifecycle:
      Bootstrap: "echo boot >> $W/boots; exit 100"
      Run: "echo run >> $W/runs; exec sleep 1000"
R
LOADER=$(cat "$R/alts/loader.pid")
"$B" deployment create --root "$R" --recipe-dir "$W/rboot" --merge test.Boot=1.0.0 > "$W/boot.out"
ID=$(sed -n 's/.*Deployment Id: *//p' "$W/boot.out")
S=$(settle "$ID")
grep -q '"SUCCEEDED"' <<<"$S" || fail "bootstrap deployment: $S"
wait_for 60 "the component runs" test -s "$W/runs"
[ "$(cat "$W/boots")" = boot ] || fail "bootstrap ran $(wc -l < "$W/boots") times"
[ "$(cat "$R/alts/loader.pid")" = "$LOADER" ] || fail "the loader itself restarted"
"$B" core uninstall --root "$R" >/dev/null
echo "ALL OK"
