#!/bin/bash
# Runs inside `unshare --mount --pid --fork --mount-proc`: /etc is a private copy on a tmpfs and
# the root lives on another tmpfs, so users, groups, units and files written here vanish with the
# namespace and the host is never changed. Usage: install_ns.sh LICHEN_BIN
set -euo pipefail
B=$1
fail() { echo "FAIL: $*"; exit 1; }
wait_for() { # seconds, description, command...
  local n=$(( $1 * 5 )) what=$2; shift 2
  for _ in $(seq "$n"); do if "$@" >/dev/null 2>&1; then return 0; fi; sleep 0.2; done
  fail "timed out waiting for $what"
}
E=$(mktemp -d); mount -t tmpfs tmpfs "$E"; cp -a /etc/. "$E"/; mount --bind "$E" /etc
W=$(mktemp -d); mount -t tmpfs tmpfs "$W"
R=$W/gg/v2
U=/etc/systemd/system/lichen.service
WANTS=/etc/systemd/system/multi-user.target.wants/lichen.service
getent passwd ggc_user >/dev/null && fail "ggc_user exists before install"

mkdir -p "$W/recipes"
cat > "$W/recipes/svc.yaml" <<'R'
RecipeFormatVersion: '2020-01-25'
ComponentName: test.Svc
ComponentVersion: '1.0.0'
Manifests:
  - Platform:
      os: '*'
    Lifecycle:
      Run: "echo running-as-$(id -un):$(id -gn); export LICHEN_NS_MARK=svc; exec sleep 1000"
R

echo "== install (systemd unit, not started)"
"$B" core install --root "$R" --init systemd --no-start
[ -f "$U" ] || fail "no unit file"
[ -L "$WANTS" ] || fail "unit not enabled"
grep -q '^KillMode=mixed$' "$U" || fail "KillMode"
grep -q '^Restart=on-failure$' "$U" || fail "Restart"
getent passwd ggc_user >/dev/null || fail "no ggc_user"
getent group ggc_group >/dev/null || fail "no ggc_group"
[ "$(stat -c %a "$R")" = 755 ] || fail "root mode $(stat -c %a "$R")"
[ "$(stat -c %a "$R/config")" = 700 ] || fail "config mode"
[ "$(readlink "$R/alts/current")" = init ] || fail "alts/current"
cmp "$B" "$R/alts/init/bin/lichen" || fail "binary not copied"
# lichen.Inference's worker travels with the core when it was built beside it.
for w in lichen-inference lichen-opcua; do
  if [ -x "$(dirname "$B")/$w" ]; then
    cmp "$(dirname "$B")/$w" "$R/alts/init/bin/$w" || fail "worker $w not copied"
  fi
done

echo "== start the unit's ExecStart, deploy a component"
EXEC=$(sed -n 's/^ExecStart=//p' "$U")
$EXEC >"$W/loader1.log" 2>&1 &
wait_for 60 "core ready" test -S "$R/ipc.socket"
wait_for 60 "cli ready" "$B" component list --root "$R"
"$B" deployment create --root "$R" --recipe-dir "$W/recipes" --merge test.Svc=1.0.0 --wait --json > "$W/d1.json" \
  || fail "deployment: $(cat "$W/d1.json")"
grep -q '"SUCCEEDED"' "$W/d1.json" || fail "deployment: $(cat "$W/d1.json")"
wait_for 60 "component runs as ggc_user" grep -q 'running-as-ggc_user:ggc_group' "$R/logs/test.Svc.log"
PID1=$(pgrep -f 'sleep 1000' | head -1)

echo "== upgrade in place (install again), restart through the loader"
"$B" core install --root "$R" --init systemd --no-start
[ "$(readlink "$R/alts/old")" = init ] || fail "alts/old should name init, is $(readlink "$R/alts/old")"
NEW=$(readlink "$R/alts/current"); [ "$NEW" != init ] || fail "alts/current did not move"
kill -0 "$PID1" || fail "the component stopped during the upgrade"
kill -TERM "$(cat "$R/alts/loader.pid")"
wait_for 60 "loader stopped" bash -c "! test -e '$R/alts/loader.pid'"
pgrep -f 'sleep 1000' && fail "component left running after the core stopped"
$EXEC >"$W/loader2.log" 2>&1 &
wait_for 60 "component back after the upgrade" bash -c "[ \$(grep -c running-as-ggc_user '$R/logs/test.Svc.log') -ge 2 ]"
grep -q "$R/alts/current/bin/lichen core run" <(ps -eo args) || fail "core not started from alts/current"
"$B" component list --root "$R" | grep -q test.Svc || fail "component list"

echo "== uninstall"
"$B" core uninstall --root "$R"
[ -e "$W/gg" ] && fail "root left behind"
[ -e "$U" ] && fail "unit left behind"
[ -e "$WANTS" ] && fail "enable link left behind"
getent passwd ggc_user >/dev/null && fail "ggc_user left behind"
getent group ggc_group >/dev/null && fail "ggc_group left behind"
pgrep -f 'lichen core|sleep 1000' && fail "processes left behind"

echo "== install without systemd: started detached, init script printed"
"$B" core install --root "$R" --init none > "$W/none.out"
grep -q '^PIDFILE=' "$W/none.out" || fail "no init script printed"
wait_for 60 "core ready" "$B" component list --root "$R"
"$B" core uninstall --root "$R"
[ -e "$W/gg" ] && fail "root left behind"
getent passwd ggc_user >/dev/null && fail "ggc_user left behind"
pgrep -f 'lichen core' && fail "processes left behind"
echo "ALL OK"
