#!/usr/bin/env python3
"""Train arjax on a Cloud TPU VM slice through gcloud: create, setup, run, logs, delete.

    python launch/tpu.py --dry-run create --name my-tpu --zone us-west4-a --accelerator v5litepod-16

Each subcommand is a pure function from the parsed arguments to the gcloud commands (lists of
strings); main() prints them (--dry-run) or runs them in order, stopping at the first failure.
Standard library only, so it runs on any machine that has gcloud.
"""
from __future__ import annotations

import argparse
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

# TPU software version per generation (cloud.google.com/tpu/docs/runtimes), keyed by the prefix of
# the accelerator type.
RUNTIMES = {"v4": "tpu-ubuntu2204-base", "v5litepod": "v2-alpha-tpuv5-lite", "v5p": "v2-alpha-tpuv5",
            "v6e": "v2-alpha-tpuv6e"}
REMOTE_DIR = "~/arjax"
VENV = "~/arjax-venv"
# These images run Ubuntu 22.04, whose python3 is 3.10, while jax >= 0.7 needs Python 3.11: arjax
# gets a python3.11 venv. The lock timeout waits out the unattended upgrades of a freshly booted VM.
INSTALL = [
    "sudo apt-get -qq -o DPkg::Lock::Timeout=600 update",
    "sudo apt-get -qq -o DPkg::Lock::Timeout=600 install -y python3.11-venv",
    f"python3.11 -m venv {VENV}",
    f"cd {REMOTE_DIR}",
    f'{VENV}/bin/pip install -e ".[dev,tpu]"',  # .[tpu]: the libtpu matching the jax arjax is tested with
]
# gcsfuse from Google's apt repository (cloud.google.com/storage/docs/cloud-storage-fuse/install),
# with the same lock timeout as above.
GCSFUSE_INSTALL = (
    'export GCSFUSE_REPO=gcsfuse-$(lsb_release -c -s) && '
    'echo "deb [signed-by=/usr/share/keyrings/cloud.google.asc] https://packages.cloud.google.com/apt '
    '$GCSFUSE_REPO main" | sudo tee /etc/apt/sources.list.d/gcsfuse.list && '
    'curl https://packages.cloud.google.com/apt/doc/apt-key.gpg | sudo tee /usr/share/keyrings/cloud.google.asc && '
    'sudo apt-get -o DPkg::Lock::Timeout=600 update && '
    'sudo apt-get -o DPkg::Lock::Timeout=600 install -y gcsfuse')
# Every worker mounts the bucket here, so that all hosts share one workdir. The trainer renames whole
# directories (orbax's temporary checkpoint directories, the token cache), which gcsfuse refuses on a
# bucket without hierarchical namespace unless --rename-dir-limit allows it (default 0).
MOUNT_ROOT = "~/gcs"
GCSFUSE = "gcsfuse --implicit-dirs --rename-dir-limit=100000"
RUN_NAME = re.compile(r"[A-Za-z0-9._-]+")  # it lands unquoted in a file name and the workdir path
BUCKET_NAME = re.compile(r"[a-z0-9]([a-z0-9._-]*[a-z0-9])?")  # Cloud Storage's characters: never quoted


class UsageError(ValueError):
    """A bad argument, reported like argparse's own errors."""


def runtime_for(accelerator: str) -> str:
    generation, _, count = accelerator.rpartition("-")
    if generation not in RUNTIMES:
        accepted = ", ".join(f"{g}-" for g in RUNTIMES)
        raise UsageError(f"unknown TPU accelerator type {accelerator!r}: it must start with one of "
                         f"{accepted} followed by the chip/core count (e.g. v5litepod-16)")
    if not re.fullmatch(r"[1-9][0-9]*", count):
        raise UsageError(f"accelerator type {accelerator!r}: the count after {generation}- must be a "
                         f"positive integer")
    return RUNTIMES[generation]


def _tpu_vm(args, verb: str, *positional: str) -> list[str]:
    cmd = ["gcloud", "compute", "tpus", "tpu-vm", verb, *positional, "--zone", args.zone]
    return cmd + (["--project", args.project] if args.project else [])


def _ssh(args, worker, script: str) -> list[str]:
    return _tpu_vm(args, "ssh", args.name) + [f"--worker={worker}", "--command", script]


def _is_git_url(repo: str) -> bool:
    return "://" in repo or re.match(r"[\w.-]+@[\w.-]+:", repo) is not None  # https://..., git@host:org/x


def _checked_run_name(name: str) -> str:
    if not RUN_NAME.fullmatch(name):
        raise UsageError(f"run name {name!r} may only hold letters, digits, '.', '_' and '-'")
    return name


def default_run_name(config: str) -> str:
    """configs/imagenet.py:d16 -> imagenet_d16, so that different configs never share a workdir."""
    path, _, arg = config.partition(":")
    return re.sub(r"[^A-Za-z0-9._-]", "_", "_".join(filter(None, [Path(path).stem, arg])))


def create_commands(args) -> list[list[str]]:
    runtime = runtime_for(args.accelerator)  # validates the type even when --version is given
    cmd = _tpu_vm(args, "create", args.name) + ["--accelerator-type", args.accelerator,
                                                "--version", args.version or runtime]
    if args.spot:
        cmd.append("--spot")
    if args.preemptible:
        cmd.append("--preemptible")
    return [cmd]


def setup_commands(args) -> list[list[str]]:
    # Setup starts from a fresh copy each time, so rerunning it updates the code on every worker.
    fresh = f"rm -rf {REMOTE_DIR}"
    if _is_git_url(args.repo):
        fetch = [fresh, f"git clone {shlex.quote(args.repo)} {REMOTE_DIR}"]
        if args.ref:
            fetch.append(f"git -C {REMOTE_DIR} checkout {shlex.quote(args.ref)}")
        return [_ssh(args, "all", " && ".join(fetch + INSTALL)), _ssh(args, "all", GCSFUSE_INSTALL)]
    if args.ref:
        raise UsageError("--ref needs a git URL as --repo; for a local path, check the ref out locally")
    if not Path(args.repo).is_dir():
        raise UsageError(f"--repo {args.repo!r} is neither a git URL nor a local directory")
    copy = _tpu_vm(args, "scp", args.repo, f"{args.name}:{REMOTE_DIR}") + ["--worker=all", "--recurse"]
    return [_ssh(args, "all", fresh), copy, _ssh(args, "all", " && ".join(INSTALL)),
            _ssh(args, "all", GCSFUSE_INSTALL)]


def _split_bucket(bucket: str) -> tuple[str, list[str]]:
    """gs://BUCKET/PATH -> (BUCKET, PATH's parts)."""
    if not bucket.startswith("gs://"):
        raise UsageError(f"--bucket must be a Cloud Storage path like gs://my-bucket/runs, got {bucket!r}")
    name, _, path = bucket[len("gs://"):].partition("/")
    if not BUCKET_NAME.fullmatch(name):
        raise UsageError(f"--bucket {bucket!r}: {name!r} is not a bucket name (lowercase letters, digits, "
                         f"'-', '_' and '.', starting and ending with a letter or digit)")
    parts = [part for part in path.split("/") if part]
    if any(part in (".", "..") for part in parts):
        raise UsageError(f"--bucket {bucket!r}: the path may not hold '.' or '..'")
    return name, parts


def run_commands(args) -> list[list[str]]:
    bucket, path = _split_bucket(args.bucket)
    for item in args.set:
        if "=" not in item:
            raise UsageError(f"--set {item!r} must look like key=value")
    name = _checked_run_name(args.run_name) if args.run_name else default_run_name(args.config)
    # The ~ parts stay unquoted so that the worker's shell expands them; only the path from --bucket
    # needs quoting (the bucket and run names are checked to be plain).
    mount = f"{MOUNT_ROOT}/{bucket}"
    workdir = f"{mount}/{shlex.quote('/'.join([*path, name]))}"
    train = " ".join([shlex.join(["train", "--config", args.config, "--workdir"]), workdir,
                      *(shlex.join(["--set", item]) for item in args.set)])
    # The mount runs in the foreground, so that its failure stops the command and shows in gcloud's
    # exit status; only training goes to the background. stdin from /dev/null lets the ssh session
    # close while training goes on.
    script = (f"mkdir -p {mount} && (mountpoint -q {mount} || {GCSFUSE} {bucket} {mount}) && "
              f"cd {REMOTE_DIR} && {{ nohup {VENV}/bin/arjax {train} "
              f"> ~/arjax_{name}.log 2>&1 < /dev/null & }}")
    return [_ssh(args, "all", script)]


def logs_commands(args) -> list[list[str]]:
    if args.worker < 0:
        raise UsageError(f"--worker must be 0 or more, got {args.worker}")
    if args.run_name:
        log = f"~/arjax_{_checked_run_name(args.run_name)}.log"
    else:
        log = '"$(ls -t ~/arjax_*.log | head -n 1)"'  # the most recently written run's log
    return [_ssh(args, args.worker, f"tail -n 200 {log}")]


def delete_commands(args) -> list[list[str]]:
    return [_tpu_vm(args, "delete", args.name) + ["--quiet"]]


def build_parser() -> argparse.ArgumentParser:
    dry_run_help = "print the gcloud commands instead of running them"
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--name", required=True, help="name of the TPU VM slice")
    common.add_argument("--zone", required=True, help="e.g. us-west4-a")
    common.add_argument("--project", help="Google Cloud project (default: gcloud's configured project)")
    # SUPPRESS keeps a subcommand from resetting a --dry-run given before it.
    common.add_argument("--dry-run", action="store_true", default=argparse.SUPPRESS, help=dry_run_help)

    parser = argparse.ArgumentParser(prog="tpu.py", description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help=dry_run_help)
    sub = parser.add_subparsers(dest="command", required=True, metavar="SUBCOMMAND")

    p = sub.add_parser("create", parents=[common], help="create the TPU VM slice")
    p.add_argument("--accelerator", required=True, help="v4-N, v5litepod-N, v5p-N or v6e-N (e.g. v5litepod-16)")
    p.add_argument("--version", help="TPU software version (default: the one for the accelerator's generation)")
    capacity = p.add_mutually_exclusive_group()
    capacity.add_argument("--spot", action="store_true", help="spot capacity (cheaper, can be reclaimed)")
    capacity.add_argument("--preemptible", action="store_true", help="preemptible capacity")
    p.set_defaults(build=create_commands)

    p = sub.add_parser("setup", parents=[common], help="put arjax, jax[tpu] and gcsfuse on every worker")
    p.add_argument("--repo", required=True, help="git URL to clone, or a local directory to copy")
    p.add_argument("--ref", help="branch, tag or commit to check out (git URL only)")
    p.set_defaults(build=setup_commands)

    p = sub.add_parser("run", parents=[common], help="start `arjax train` in the background on every worker")
    p.add_argument("--config", required=True, help="e.g. configs/imagenet.py:d16")
    p.add_argument("--bucket", required=True,
                   help="gs://BUCKET[/PATH]: mounted at ~/gcs/BUCKET on every worker; the workdir is "
                        "~/gcs/BUCKET/PATH/RUN_NAME")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    p.add_argument("--run-name", help="default: from the config, e.g. imagenet_d16")
    p.set_defaults(build=run_commands)

    p = sub.add_parser("logs", parents=[common], help="last 200 lines of a run's log on one worker")
    p.add_argument("--worker", type=int, default=0, help="worker index (default 0)")
    p.add_argument("--run-name", help="default: the most recent run on that worker")
    p.set_defaults(build=logs_commands)

    p = sub.add_parser("delete", parents=[common], help="delete the TPU VM slice")
    p.set_defaults(build=delete_commands)
    return parser


def execute(commands: list[list[str]]) -> int:
    if shutil.which("gcloud") is None:
        sys.exit("tpu.py: error: gcloud is not on PATH; install the Google Cloud CLI "
                 "(https://cloud.google.com/sdk/docs/install), or use --dry-run to print the commands")
    for cmd in commands:
        print("+", shlex.join(cmd), file=sys.stderr, flush=True)
        try:
            subprocess.run(cmd, check=True)
        except subprocess.CalledProcessError as e:
            return e.returncode if e.returncode > 0 else 1  # a signal gives a negative code
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        commands = args.build(args)
    except UsageError as e:
        parser.error(str(e))
    if args.dry_run:
        print("\n".join(shlex.join(cmd) for cmd in commands))
        return 0
    return execute(commands)


if __name__ == "__main__":
    sys.exit(main())
