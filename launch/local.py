"""Start an N-process arjax run on this machine (each process with its own fake CPU devices), the way a
pod runs one process per host. For testing multi-host code without a pod.

    python launch/local.py --processes 2 --devices 4 -- arjax train --config configs/quickstart.py:var ...

Each process gets ARJAX_COORDINATOR (a free loopback port), ARJAX_NUM_PROCESSES, ARJAX_PROCESS_ID and
XLA_FLAGS=--xla_force_host_platform_device_count=DEVICES (after the caller's other XLA flags);
`arjax.parallel.initialize` reads them. If any process fails, the others are stopped at once (a pod would
otherwise wait on the dead peer) and the launcher exits with the failed process's status.
"""
from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def process_env(process_id: int, processes: int, devices: int, port: int, base=None) -> dict:
    env = dict(os.environ if base is None else base)
    # the caller's other XLA flags (a dump folder, optimisation options) reach every process
    flags = [f for f in env.get("XLA_FLAGS", "").split() if not f.startswith("--xla_force_host_platform_device_count")]
    env.update(ARJAX_COORDINATOR=f"127.0.0.1:{port}", ARJAX_NUM_PROCESSES=str(processes),
               ARJAX_PROCESS_ID=str(process_id), JAX_PLATFORMS="cpu",
               XLA_FLAGS=" ".join([*flags, f"--xla_force_host_platform_device_count={devices}"]))
    return env


def launch(command: list[str], processes: int, devices: int, grace_s: float = 10.0) -> int:
    port = free_port()
    procs = [subprocess.Popen(command, env=process_env(i, processes, devices, port)) for i in range(processes)]
    status = 0
    try:
        while any(p.poll() is None for p in procs):
            failed = [(i, p.returncode) for i, p in enumerate(procs) if p.returncode not in (None, 0)]
            if failed:
                i, status = failed[0]
                print(f"launch/local.py: process {i} exited with status {status}; stopping the others",
                      file=sys.stderr, flush=True)
                _stop(procs, grace_s)
                break
            time.sleep(0.2)
    except KeyboardInterrupt:
        _stop(procs, grace_s)
        return 130
    return status or next((p.returncode for p in procs if p.returncode), 0)


def _stop(procs, grace_s: float) -> None:
    """SIGTERM first (arjax saves a checkpoint and stops), SIGKILL after the grace period."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.time() + grace_s
    for p in procs:
        try:
            p.wait(timeout=max(deadline - time.time(), 0.1))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--devices", type=int, default=4, help="fake CPU devices per process")
    ap.add_argument("command", nargs=argparse.REMAINDER, help="the command each process runs, after --")
    args = ap.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        ap.error("give the command to run after --, e.g. -- arjax train --config ...")
    if args.processes < 1 or args.devices < 1:
        ap.error("--processes and --devices must be >= 1")
    return launch(command, args.processes, args.devices)


if __name__ == "__main__":
    sys.exit(main())
