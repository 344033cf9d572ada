#!/bin/bash
# Runs inside `unshare --mount --pid --fork --mount-proc`: /etc, /usr and /var are overlays on a
# tmpfs, so dpkg, users and files written here vanish with the namespace and the host is never
# changed. Installs the package, deploys a component, upgrades the package, removes and purges it.
# Usage: deb_ns.sh LICHEN_BIN DEB_V1 DEB_V2
set -euo pipefail
B=$1 V1=$2 V2=$3
fail() { echo "FAIL: $*"; cat "$R/logs/loader.log" 2>/dev/null | tail -20; exit 1; }
wait_for() {
  local n=$(( $1 * 5 )) what=$2; shift 2
  for _ in $(seq "$n"); do if "$@" >/dev/null 2>&1; then return 0; fi; sleep 0.2; done
  fail "timed out waiting for $what"
}
W=$(mktemp -d); mount -t tmpfs tmpfs "$W"
for d in etc usr var; do
  mkdir -p "$W/o/$d/u" "$W/o/$d/w"
  mount -t overlay overlay -o "lowerdir=/$d,upperdir=$W/o/$d/u,workdir=$W/o/$d/w" "/$d"
done
R=$W/gg/v2
dpkg -s lichen >/dev/null 2>&1 && fail "lichen already installed"
getent passwd ggc_user >/dev/null && fail "ggc_user exists before install"
# The package's own default names /greengrass/v2; this namespace keeps the root on its tmpfs.
printf 'LICHEN_ROOT=%s\nLICHEN_USER=ggc_user:ggc_group\n' "$R" > /etc/default/lichen
DPKG="dpkg --force-confold --force-confdef"

echo "== install the package"
$DPKG -i "$V1" > "$W/i1.out" 2>&1 || { cat "$W/i1.out"; fail "dpkg -i"; }
[ -x /usr/bin/lichen ] || fail "no /usr/bin/lichen"
[ -x /usr/bin/lichen-inference ] || fail "no /usr/bin/lichen-inference (built beside lichen)"
[ -x /usr/bin/lichen-opcua ] || fail "no /usr/bin/lichen-opcua (built beside lichen)"
[ -f /etc/lichen/config.yaml ] || fail "no default config"
getent passwd ggc_user >/dev/null || fail "no ggc_user"
wait_for 60 "core ready" lichen component list --root "$R"
lichen core effective-config --root "$R" | grep -q 'thingName: lichen-core' || fail "default config not merged"

mkdir -p "$W/recipes"
cat > "$W/recipes/svc.yaml" <<'R'
RecipeFormatVersion: '2020-01-25'
ComponentName: test.Svc
ComponentVersion: '1.0.0'
Manifests:
  - Platform:
      os: '*'
    Lifecycle:
      Run: "echo started-as-$(id -un); exec sleep 1000"
R
lichen deployment create --root "$R" --recipe-dir "$W/recipes" --merge test.Svc=1.0.0 --wait --json > "$W/d.json" \
  || fail "deployment: $(cat "$W/d.json")"
wait_for 60 "component running" grep -q started-as-ggc_user "$R/logs/test.Svc.log"

echo "== upgrade the package in place"
$DPKG -i "$V2" > "$W/i2.out" 2>&1 || { cat "$W/i2.out"; fail "dpkg -i (upgrade)"; }
dpkg -s lichen | grep -q "^Version: $(dpkg-deb -f "$V2" Version)$" || fail "version not upgraded"
[ "$(readlink "$R/alts/old")" = init ] || fail "alts/old should be the first install"
wait_for 60 "component running again on the new core" bash -c "[ \$(grep -c started-as-ggc_user '$R/logs/test.Svc.log') -ge 2 ]"
lichen component list --root "$R" | grep -q test.Svc || fail "component lost in the upgrade"
lichen deployment list --root "$R" | grep -q SUCCEEDED || fail "deployment history lost"

echo "== remove keeps the root, purge removes everything"
dpkg -r lichen > "$W/r.out" 2>&1 || { cat "$W/r.out"; fail "dpkg -r"; }
[ -e /usr/bin/lichen ] && fail "binary left after remove"
[ -e /usr/bin/lichen-inference ] && fail "inference worker left after remove"
[ -e /usr/bin/lichen-opcua ] && fail "OPC UA worker left after remove"
[ -d "$R/packages" ] || fail "remove lost the root"
pgrep -f '[l]ichen core' && fail "core still running after remove"
dpkg -P lichen > "$W/p.out" 2>&1 || { cat "$W/p.out"; fail "dpkg -P"; }
[ -e "$W/gg" ] && fail "purge left the root"
getent passwd ggc_user >/dev/null && fail "purge left ggc_user"
getent group ggc_group >/dev/null && fail "purge left ggc_group"
[ -e /etc/lichen ] && fail "purge left /etc/lichen"
[ -e /var/lib/lichen ] && fail "purge left /var/lib/lichen"
pgrep -f 'sleep 1000' && fail "component left running"
echo "ALL OK"
