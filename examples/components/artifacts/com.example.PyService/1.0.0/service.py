"""A long-running component: prints a heartbeat until the core stops it."""
import os
import signal
import sys
import time

running = True


def stop(signum, frame):
    global running
    running = False


signal.signal(signal.SIGTERM, stop)
interval = float(sys.argv[1]) if len(sys.argv) > 1 else 5.0
print(f"service started as pid {os.getpid()}, heartbeat every {interval}s", flush=True)
beats = 0
while running:
    beats += 1
    print(f"heartbeat {beats}", flush=True)
    time.sleep(interval)
print("service stopping", flush=True)
