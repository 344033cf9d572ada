#!/usr/bin/env python3
"""Core figures: idle RSS, start-to-ready, and deployment-create-to-RUNNING for 1, 50 and 200
trivial components. Uses only the Python standard library and the release binary.

    cargo build --release -p lichen && python3 bench/core.py [--bin target/release/lichen]
"""
import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

RECIPE = """RecipeFormatVersion: '2020-01-25'
ComponentName: bench.C{i}
ComponentVersion: '1.0.0'
Manifests:
  - Platform:
      os: '*'
    Lifecycle:
      Run: exec sleep 100000
"""


def start_core(binary, root):
    t0 = time.perf_counter()
    p = subprocess.Popen([binary, "core", "run", "--root", root],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    for line in p.stdout:
        if "ready in" in line:
            return p, (time.perf_counter() - t0) * 1000.0
    raise RuntimeError("core exited before it was ready")


def stop_core(p):
    p.send_signal(signal.SIGTERM)
    p.wait(timeout=120)


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return -1


def smaps_breakdown(pid):
    """Resident KiB of the process by where the pages come from: the executable's mappings one by
    one (text, read-only data, relocated read-only data, data), heap, other anonymous memory
    (thread stacks, allocator arenas), shared libraries, the main stack."""
    exe = os.path.realpath(f"/proc/{pid}/exe")
    rows, cur = [], None
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            parts = line.split()
            if "-" in parts[0] and len(parts) >= 5 and not parts[0].endswith(":"):
                lo, hi = (int(x, 16) for x in parts[0].split("-"))
                cur = {"perms": parts[1], "offset": int(parts[2], 16), "size": (hi - lo) // 1024,
                       "path": parts[5] if len(parts) > 5 else "", "Rss": 0, "Anonymous": 0}
                rows.append(cur)
            elif parts[0] in ("Rss:", "Anonymous:"):
                cur[parts[0][:-1]] = int(parts[1])
    out, anon_n, anon_kb, libs, other = [], 0, 0, 0, 0
    for r in rows:
        if r["path"] == exe:
            kind = {"r-xp": "text", "rw-p": "data/.bss"}.get(r["perms"], "read-only")
            if r["perms"] == "r--p" and r["Anonymous"]:
                kind = "relro (.data.rel.ro, .got)"
            out.append(f"  exe {r['perms']} +{r['offset']:#x} {kind}: {r['Rss']} KiB "
                       f"of {r['size']} KiB mapped ({r['Anonymous']} KiB private)")
        elif r["path"] in ("[heap]", "[stack]"):
            out.append(f"  {r['path']}: {r['Rss']} KiB")
        elif r["path"] == "":
            anon_n += 1
            anon_kb += r["Rss"]
        elif r["path"].startswith("/"):
            libs += r["Rss"]
        else:
            other += r["Rss"]
    out.append(f"  anonymous mappings (thread stacks, arenas; {anon_n}): {anon_kb} KiB")
    out.append(f"  shared libraries: {libs} KiB; vdso/vvar: {other} KiB")
    with open(f"/proc/{pid}/status") as f:
        threads = next(l.split()[1] for l in f if l.startswith("Threads:"))
    out.append(f"  threads: {threads}")
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=os.environ.get("LICHEN_BIN", "target/release/lichen"))
    ap.add_argument("--starts", type=int, default=20)
    ap.add_argument("--breakdown", action="store_true",
                    help="print where the idle core's resident pages come from (/proc/PID/smaps)")
    args = ap.parse_args()
    binary = os.path.abspath(args.bin)
    work = tempfile.mkdtemp(prefix="lichen-bench-")
    try:
        # Start to ready: a fresh root each time (first start creates the layout).
        ready = []
        for n in range(args.starts):
            root = os.path.join(work, f"start{n}")
            p, ms = start_core(binary, root)
            ready.append(ms)
            stop_core(p)
        # Idle RSS after the core settled.
        root = os.path.join(work, "idle")
        p, _ = start_core(binary, root)
        time.sleep(2)
        idle = rss_kb(p.pid)
        idle_breakdown = smaps_breakdown(p.pid) if args.breakdown else None
        stop_core(p)
        print(f"start to ready (spawn to 'ready' line, {args.starts} fresh roots): "
              f"median {statistics.median(ready):.1f} ms, max {max(ready):.1f} ms  (target <= 100 ms)")
        print(f"idle RSS, no components: {idle / 1024:.1f} MiB  (target <= 10 MB)")
        if idle_breakdown:
            print(idle_breakdown)
        # Idle RSS with the built-in services deployed (stream manager, client device auth, the
        # client-device broker, the bridge) and the offline cloud link.
        root = os.path.join(work, "services")
        p, _ = start_core(binary, root)
        update = {
            "aws.greengrass.StreamManager": {"MERGE": {"STREAM_MANAGER_SERVER_PORT": "0"}},
            "aws.greengrass.clientdevices.mqtt.EMQX": {
                "MERGE": {"emqx": {"listener.ssl.external": "0", "host": "127.0.0.1"}}},
            "aws.greengrass.clientdevices.Auth": {
                "MERGE": {"certificateAuthority": {"caType": "ECDSA_P256"}}},
        }
        import json
        cmd = [binary, "deployment", "create", "--root", root, "--wait",
               "--update-config", json.dumps(update)]
        for name, version in [("aws.greengrass.StreamManager", "2.2.1"),
                              ("aws.greengrass.clientdevices.Auth", "2.5.3"),
                              ("aws.greengrass.clientdevices.mqtt.EMQX", "2.0.1"),
                              ("aws.greengrass.clientdevices.mqtt.Bridge", "2.3.2")]:
            cmd += ["--merge", f"{name}={version}"]
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode != 0:
            print(out.stdout, out.stderr, file=sys.stderr)
            raise SystemExit("deployment of the built-in services failed")
        time.sleep(2)
        services = rss_kb(p.pid)
        services_breakdown = smaps_breakdown(p.pid) if args.breakdown else None
        stop_core(p)
        print(f"idle RSS, built-in services deployed: {services / 1024:.1f} MiB  (target <= 10 MB)")
        if services_breakdown:
            print(services_breakdown)
        # Deployment create to RUNNING.
        for count in (1, 50, 200):
            root = os.path.join(work, f"deploy{count}")
            recipes = os.path.join(work, f"recipes{count}")
            os.makedirs(recipes)
            for i in range(count):
                with open(os.path.join(recipes, f"c{i}.yaml"), "w") as f:
                    f.write(RECIPE.format(i=i))
            p, _ = start_core(binary, root)
            cmd = [binary, "deployment", "create", "--root", root, "--recipe-dir", recipes, "--wait"]
            for i in range(count):
                cmd += ["--merge", f"bench.C{i}=1.0.0"]
            t0 = time.perf_counter()
            out = subprocess.run(cmd, capture_output=True, text=True)
            ms = (time.perf_counter() - t0) * 1000.0
            if out.returncode != 0:
                print(out.stdout, out.stderr, file=sys.stderr)
                raise SystemExit(f"deployment of {count} components failed")
            listing = subprocess.run([binary, "component", "list", "--root", root, "--json"],
                                     capture_output=True, text=True, check=True).stdout
            import json
            running = sum(1 for c in json.loads(listing)
                          if c["componentName"].startswith("bench.C") and c["state"] == "RUNNING")
            target = {1: "<= 300 ms", 50: "", 200: "<= 5 s"}[count]
            loaded = rss_kb(p.pid)
            stop_core(p)
            print(f"deployment create -> RUNNING, {count:3d} components: {ms:8.1f} ms "
                  f"({running} RUNNING; core RSS {loaded / 1024:.1f} MiB)  {target}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
