"""launch/tpu.py in --dry-run mode (exact gcloud commands, written out here by hand from the gcloud
forms, not produced by the script), its argument errors, how it runs gcloud, and gpu_multinode.sh's
syntax. None of it needs gcloud."""
import argparse
import importlib.util
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TPU = REPO / "launch" / "tpu.py"
WHERE = ["--name", "my-tpu", "--zone", "us-west4-a"]
INSTALL = ("sudo apt-get -qq -o DPkg::Lock::Timeout=600 update && "
           "sudo apt-get -qq -o DPkg::Lock::Timeout=600 install -y python3.11-venv && "
           "python3.11 -m venv ~/arjax-venv && cd ~/arjax && "
           '~/arjax-venv/bin/pip install -e ".[dev,tpu]"')
# In the dry-run output, inside the single quotes around --command.
GCSFUSE_INSTALL = ('export GCSFUSE_REPO=gcsfuse-$(lsb_release -c -s) && '
                   'echo "deb [signed-by=/usr/share/keyrings/cloud.google.asc] https://packages.cloud.google.com/apt '
                   '$GCSFUSE_REPO main" | sudo tee /etc/apt/sources.list.d/gcsfuse.list && '
                   'curl https://packages.cloud.google.com/apt/doc/apt-key.gpg | '
                   'sudo tee /usr/share/keyrings/cloud.google.asc && '
                   'sudo apt-get -o DPkg::Lock::Timeout=600 update && '
                   'sudo apt-get -o DPkg::Lock::Timeout=600 install -y gcsfuse')


def tpu(*args, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(TPU), *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=30)


def dry(*args) -> list[str]:
    result = tpu("--dry-run", *args)
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


@pytest.mark.parametrize("accelerator, version", [
    ("v4-32", "tpu-ubuntu2204-base"),
    ("v5litepod-16", "v2-alpha-tpuv5-lite"),
    ("v5p-8", "v2-alpha-tpuv5"),
    ("v6e-8", "v2-alpha-tpuv6e"),
])
def test_create_picks_the_runtime_of_each_generation(accelerator, version):
    assert dry("create", *WHERE, "--accelerator", accelerator) == [
        f"gcloud compute tpus tpu-vm create my-tpu --zone us-west4-a --accelerator-type {accelerator} "
        f"--version {version}"]


def test_create_options():
    assert dry("create", *WHERE, "--project", "my-proj", "--accelerator", "v5litepod-16", "--spot") == [
        "gcloud compute tpus tpu-vm create my-tpu --zone us-west4-a --project my-proj "
        "--accelerator-type v5litepod-16 --version v2-alpha-tpuv5-lite --spot"]
    assert dry("create", *WHERE, "--accelerator", "v4-8", "--version", "tpu-vm-base", "--preemptible") == [
        "gcloud compute tpus tpu-vm create my-tpu --zone us-west4-a --accelerator-type v4-8 "
        "--version tpu-vm-base --preemptible"]


def test_dry_run_may_follow_the_subcommand():
    assert tpu("delete", *WHERE, "--dry-run").stdout == "gcloud compute tpus tpu-vm delete my-tpu --zone us-west4-a --quiet\n"


def test_setup_from_git_url():
    assert dry("setup", *WHERE, "--repo", "https://github.com/me/arjax.git", "--ref", "v0.1") == [
        "gcloud compute tpus tpu-vm ssh my-tpu --zone us-west4-a --worker=all --command "
        "'rm -rf ~/arjax && git clone https://github.com/me/arjax.git ~/arjax && "
        f"git -C ~/arjax checkout v0.1 && {INSTALL}'",
        f"gcloud compute tpus tpu-vm ssh my-tpu --zone us-west4-a --worker=all --command '{GCSFUSE_INSTALL}'"]


def test_setup_from_local_path_copies_it_first():
    assert dry("setup", *WHERE, "--project", "p", "--repo", ".") == [
        "gcloud compute tpus tpu-vm ssh my-tpu --zone us-west4-a --project p --worker=all --command 'rm -rf ~/arjax'",
        "gcloud compute tpus tpu-vm scp . 'my-tpu:~/arjax' --zone us-west4-a --project p --worker=all --recurse",
        f"gcloud compute tpus tpu-vm ssh my-tpu --zone us-west4-a --project p --worker=all --command '{INSTALL}'",
        f"gcloud compute tpus tpu-vm ssh my-tpu --zone us-west4-a --project p --worker=all --command "
        f"'{GCSFUSE_INSTALL}'"]


def test_run_mounts_the_bucket_then_starts_training_on_all_workers():
    assert dry("run", *WHERE, "--config", "configs/imagenet.py:d16", "--bucket", "gs://my-bucket/runs/",
               "--set", "steps=100", "--set", "data.kwargs.root=/mnt/imagenet train") == [
        "gcloud compute tpus tpu-vm ssh my-tpu --zone us-west4-a --worker=all --command "
        "'mkdir -p ~/gcs/my-bucket && (mountpoint -q ~/gcs/my-bucket || "
        "gcsfuse --implicit-dirs --rename-dir-limit=100000 my-bucket ~/gcs/my-bucket) && "
        "cd ~/arjax && { nohup ~/arjax-venv/bin/arjax train --config configs/imagenet.py:d16 "
        "--workdir ~/gcs/my-bucket/runs/imagenet_d16 --set steps=100 "
        "--set '\"'\"'data.kwargs.root=/mnt/imagenet train'\"'\"' "
        "> ~/arjax_imagenet_d16.log 2>&1 < /dev/null & }'"]


def remote_words(line: str) -> list[str]:
    return shlex.split(shlex.split(line)[-1])  # local shell, then the worker's shell (no ~ expansion)


def test_run_quotes_each_override_for_the_remote_shell():
    tricky = "data.kwargs={'name': 'imagenet2012', 'split': 'train[:90%]'}"
    [line] = dry("run", *WHERE, "--config", "configs/imagenet.py:d16", "--bucket", "gs://b",
                 "--run-name", "try-2", "--set", tricky)
    remote = remote_words(line)
    assert remote[remote.index("--set") + 1] == tricky
    assert remote[-7:] == [">", "~/arjax_try-2.log", "2>&1", "<", "/dev/null", "&", "}"]


@pytest.mark.parametrize("bucket, name, workdir", [
    ("gs://b", "b", "~/gcs/b/imagenet_d16"),
    ("gs://b/", "b", "~/gcs/b/imagenet_d16"),
    ("gs://my.bucket_1//a/b/", "my.bucket_1", "~/gcs/my.bucket_1/a/b/imagenet_d16"),
])
def test_run_mounts_only_the_bucket_and_puts_the_workdir_under_it(bucket, name, workdir):
    [line] = dry("run", *WHERE, "--config", "configs/imagenet.py:d16", "--bucket", bucket)
    remote = remote_words(line)
    assert remote[:13] == ["mkdir", "-p", f"~/gcs/{name}", "&&", "(mountpoint", "-q", f"~/gcs/{name}", "||",
                           "gcsfuse", "--implicit-dirs", "--rename-dir-limit=100000", name, f"~/gcs/{name})"]
    assert remote[remote.index("--workdir") + 1] == workdir


def test_run_quotes_the_bucket_path_but_not_the_tilde():
    [line] = dry("run", *WHERE, "--config", "c.py", "--bucket", "gs://b/my runs", "--run-name", "r1")
    assert "--workdir ~/gcs/b/'\"'\"'my runs/r1'\"'\"' " in line
    remote = remote_words(line)
    assert remote[remote.index("--workdir") + 1] == "~/gcs/b/my runs/r1"


def fake_worker(tmp_path, mounted: bool, gcsfuse_status: int = 0) -> dict:
    """A home directory with ~/arjax and a fake ~/arjax-venv/bin/arjax that records its arguments, and
    mountpoint / gcsfuse stand-ins on PATH that record theirs."""
    home, bin_dir = tmp_path / "home", tmp_path / "bin"
    for d in (home / "arjax", home / "arjax-venv" / "bin", bin_dir):
        d.mkdir(parents=True)
    scripts = {home / "arjax-venv" / "bin" / "arjax": f'printf "%s\\n" "$@" > "{tmp_path}/arjax.tmp"\n'
                                                       f'mv "{tmp_path}/arjax.tmp" "{tmp_path}/arjax"\n',
               bin_dir / "mountpoint": f"exit {0 if mounted else 1}\n",
               bin_dir / "gcsfuse": f'printf "%s\\n" "$@" > "{tmp_path}/gcsfuse"\nexit {gcsfuse_status}\n'}
    for path, body in scripts.items():
        path.write_text("#!/bin/sh\n" + body)
        path.chmod(0o755)
    return {**os.environ, "HOME": str(home), "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}


def on_worker(tmp_path, env, *run_args) -> subprocess.CompletedProcess:
    [line] = dry("run", *WHERE, "--config", "configs/imagenet.py:d16", *run_args)
    return subprocess.run(["bash", "-c", shlex.split(line)[-1]], env=env, capture_output=True, text=True,
                          timeout=30)


def wait_for(path: Path) -> str:
    for _ in range(300):
        if path.exists():
            return path.read_text()
        time.sleep(0.05)
    raise AssertionError(f"{path} never appeared")


def test_run_script_on_a_worker_mounts_then_trains_with_the_expanded_workdir(tmp_path):
    env = fake_worker(tmp_path, mounted=False)
    result = on_worker(tmp_path, env, "--bucket", "gs://b/my runs", "--set", "steps=1")
    assert result.returncode == 0, result.stderr
    home = env["HOME"]
    assert (tmp_path / "gcsfuse").read_text().splitlines() == [
        "--implicit-dirs", "--rename-dir-limit=100000", "b", f"{home}/gcs/b"]
    assert Path(home, "gcs", "b").is_dir()
    assert wait_for(tmp_path / "arjax").splitlines() == [
        "train", "--config", "configs/imagenet.py:d16", "--workdir", f"{home}/gcs/b/my runs/imagenet_d16",
        "--set", "steps=1"]
    assert Path(home, "arjax_imagenet_d16.log").exists()


def test_run_script_on_a_worker_reuses_an_existing_mount(tmp_path):
    env = fake_worker(tmp_path, mounted=True)
    assert on_worker(tmp_path, env, "--bucket", "gs://b").returncode == 0
    assert wait_for(tmp_path / "arjax").splitlines()[4] == f"{env['HOME']}/gcs/b/imagenet_d16"
    assert not (tmp_path / "gcsfuse").exists()


def test_run_script_on_a_worker_stops_when_the_mount_fails(tmp_path):
    env = fake_worker(tmp_path, mounted=False, gcsfuse_status=1)
    assert on_worker(tmp_path, env, "--bucket", "gs://b").returncode == 1
    time.sleep(0.5)
    assert not (tmp_path / "arjax").exists()


def test_logs():
    assert dry("logs", *WHERE, "--worker", "3", "--run-name", "imagenet_d16") == [
        "gcloud compute tpus tpu-vm ssh my-tpu --zone us-west4-a --worker=3 --command "
        "'tail -n 200 ~/arjax_imagenet_d16.log'"]
    assert dry("logs", *WHERE) == [
        "gcloud compute tpus tpu-vm ssh my-tpu --zone us-west4-a --worker=0 --command "
        "'tail -n 200 \"$(ls -t ~/arjax_*.log | head -n 1)\"'"]


def test_delete():
    assert dry("delete", *WHERE, "--project", "p") == [
        "gcloud compute tpus tpu-vm delete my-tpu --zone us-west4-a --project p --quiet"]


@pytest.mark.parametrize("args, message", [
    (["create", *WHERE, "--accelerator", "v7-8"], "unknown TPU accelerator type 'v7-8'"),
    (["create", *WHERE, "--accelerator", "v5e-16"], "v4-, v5litepod-, v5p-, v6e-"),
    (["create", *WHERE, "--accelerator", "v5p-0"], "must be a positive integer"),
    (["create", *WHERE, "--accelerator", "v6e-eight"], "must be a positive integer"),
    (["create", *WHERE, "--accelerator", "v4-8", "--spot", "--preemptible"], "not allowed with argument"),
    (["run", *WHERE, "--config", "c.py", "--bucket", "s3://b/runs"], "--bucket must be a Cloud Storage path"),
    (["run", *WHERE, "--config", "c.py", "--bucket", "gs://"], "'' is not a bucket name"),
    (["run", *WHERE, "--config", "c.py", "--bucket", "gs://My_Bucket/runs"], "'My_Bucket' is not a bucket name"),
    (["run", *WHERE, "--config", "c.py", "--bucket", "gs://b/../x"], "may not hold '.' or '..'"),
    (["run", *WHERE, "--config", "c.py", "--bucket", "gs://b", "--set", "steps"], "must look like key=value"),
    (["run", *WHERE, "--config", "c.py", "--bucket", "gs://b", "--run-name", "a b"], "run name 'a b'"),
    (["setup", *WHERE, "--repo", ".", "--ref", "main"], "--ref needs a git URL"),
    (["setup", *WHERE, "--repo", "no/such/dir"], "neither a git URL nor a local directory"),
    (["create", *WHERE], "required: --accelerator"),
    (["run", *WHERE, "--config", "c.py"], "required: --bucket"),
    (["setup", *WHERE], "required: --repo"),
    (["delete", "--name", "my-tpu"], "required: --zone"),
    (["logs", "--zone", "z"], "required: --name"),
    ([], "required: SUBCOMMAND"),
])
def test_bad_arguments_exit_nonzero_naming_the_problem(args, message):
    result = tpu("--dry-run", *args)
    assert result.returncode != 0 and result.stdout == ""
    assert message in result.stderr and "Traceback" not in result.stderr


def fake_gcloud(tmp_path, status: int) -> dict:
    """A gcloud that records its arguments and exits with `status`."""
    script = tmp_path / "gcloud"
    script.write_text(f'#!/bin/sh\necho "$*" >> "{tmp_path}/calls"\nexit {status}\n')
    script.chmod(0o755)
    return {**os.environ, "PATH": f"{tmp_path}{os.pathsep}{os.environ['PATH']}"}


def test_runs_each_command_in_order(tmp_path):
    result = tpu("setup", *WHERE, "--repo", ".", env=fake_gcloud(tmp_path, 0))
    assert result.returncode == 0, result.stderr
    calls = (tmp_path / "calls").read_text().splitlines()
    assert [c.split()[3] for c in calls] == ["ssh", "scp", "ssh", "ssh"]
    assert calls[1] == "compute tpus tpu-vm scp . my-tpu:~/arjax --zone us-west4-a --worker=all --recurse"


def test_stops_at_the_first_failure_with_gclouds_status(tmp_path):
    result = tpu("setup", *WHERE, "--repo", ".", env=fake_gcloud(tmp_path, 3))
    assert result.returncode == 3
    assert len((tmp_path / "calls").read_text().splitlines()) == 1


def test_missing_gcloud_is_a_message_not_a_traceback(tmp_path):
    result = tpu("delete", *WHERE, env={**os.environ, "PATH": str(tmp_path)})
    assert result.returncode != 0
    assert "gcloud is not on PATH" in result.stderr and "Traceback" not in result.stderr


def test_command_builders_are_callable_directly():
    spec = importlib.util.spec_from_file_location("launch_tpu", TPU)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    args = argparse.Namespace(name="t", zone="z", project=None, accelerator="v6e-8", version=None,
                              spot=True, preemptible=False)
    assert module.create_commands(args) == [["gcloud", "compute", "tpus", "tpu-vm", "create", "t", "--zone", "z",
                                             "--accelerator-type", "v6e-8", "--version", "v2-alpha-tpuv6e", "--spot"]]
    assert module.delete_commands(args) == [["gcloud", "compute", "tpus", "tpu-vm", "delete", "t", "--zone", "z",
                                             "--quiet"]]
    with pytest.raises(ValueError, match="unknown TPU accelerator"):
        module.create_commands(argparse.Namespace(**{**vars(args), "accelerator": "tpu-8"}))


def test_gpu_multinode_example():
    script = REPO / "launch" / "gpu_multinode.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text()
    for line in ("export ARJAX_COORDINATOR=host0:1234", "export ARJAX_NUM_PROCESSES=2", "export ARJAX_PROCESS_ID="):
        assert line in text
    assert "SLURM_PROCID" in text and "SLURM_NTASKS" in text and "scontrol show hostnames" in text
