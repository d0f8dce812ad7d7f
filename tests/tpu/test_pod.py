"""tpu/pod.py: the gcloud commands printed by --dry_run, and the per-host scripts run for real in a fake home."""
import os
import shlex
import signal
import subprocess
import sys
import time

import pytest

from tpu import pod as pod_lib

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BASE = ["--name=geo-pod", "--zone=us-central2-b", "--project=my-proj", "--dry_run"]


def dry_run(command, *flags, extra=()):
  """Runs the script's main as a user would; returns the printed commands, each split into argv."""
  argv = [sys.executable, "-m", "tpu.pod", command, *BASE, *flags]
  if extra:
    argv += ["--", *extra]
  result = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=60)
  assert result.returncode == 0, result.stderr
  return [shlex.split(line) for line in result.stdout.splitlines()]


def remote_script(argv):
  [command] = [a for a in argv if a.startswith("--command=")]
  return command[len("--command="):]


def assert_valid_bash(script):
  subprocess.run(["bash", "-n", "-c", script], check=True)


def test_create_direct_and_queued():
  [cmd] = dry_run("create", "--accelerator_type=v4-32", "--runtime_version=tpu-ubuntu2204-base", "--spot")
  assert cmd == ["gcloud", "compute", "tpus", "tpu-vm", "create", "geo-pod", "--zone=us-central2-b",
                 "--project=my-proj", "--accelerator-type=v4-32", "--version=tpu-ubuntu2204-base", "--spot"]
  [cmd] = dry_run("create", "--queued", "--reserved")
  assert cmd[:6] == ["gcloud", "compute", "tpus", "queued-resources", "create", "geo-pod"]
  assert "--node-id=geo-pod" in cmd and "--runtime-version=v2-alpha-tpuv5-lite" in cmd
  assert "--accelerator-type=v5litepod-16" in cmd and cmd[-1] == "--reserved"


def test_spot_and_reserved_conflict():
  result = subprocess.run([sys.executable, "-m", "tpu.pod", "create", *BASE, "--spot", "--reserved"], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
  assert result.returncode == 2 and "exclude each other" in result.stderr


def test_install_from_local_checkout():
  archive, scp, ssh = dry_run("install")
  assert archive[:4] == ["git", "-C", REPO, "archive"] and archive[-1] == "HEAD"
  assert scp[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "scp"] and "--worker=all" in scp
  assert scp[5] == "/tmp/geojax-src.tar.gz" and scp[6] == "geo-pod:geojax-src.tar.gz"
  assert ssh[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "geo-pod"] and "--worker=all" in ssh
  script = remote_script(ssh)
  assert "tar -xzf ~/geojax-src.tar.gz -C ~/geojax" in script
  assert "pip install --quiet -e '.[tpu]'" in script
  assert_valid_bash(script)


def test_install_from_git():
  [ssh] = dry_run("install", "--source=git", "--repo=https://example.com/geojax.git", "--ref=v0.1")
  script = remote_script(ssh)
  assert "git clone --quiet https://example.com/geojax.git ~/geojax" in script
  assert "fetch --quiet origin v0.1" in script and "checkout --quiet FETCH_HEAD" in script
  assert_valid_bash(script)


def test_mount_bucket_on_every_host():
  [ssh] = dry_run("mount", "--bucket=gs://geo-bucket", "--mount_point=shared")
  assert "--worker=all" in ssh
  script = remote_script(ssh)
  assert_valid_bash(script)
  assert "gcsfuse --implicit-dirs geo-bucket ~/shared" in script and "apt-get install -y -qq gcsfuse" in script
  with pytest.raises(ValueError, match="must name a bucket"):
    pod_lib.mount_script("gs://bucket/sub/dir", "m")


def test_launch_on_all_workers_with_overrides():
  [ssh] = dry_run("launch", "--config=configs/geo_r.py:3b",
                  extra=["--config.model.hf_path=/models/Qwen2.5-VL-3B-Instruct",
                         "--config.grpo.rewards={'geo_r_distance_paper': 1.0}"])
  assert ssh[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "geo-pod"]
  assert "--worker=all" in ssh and "--zone=us-central2-b" in ssh and "--project=my-proj" in ssh
  script = remote_script(ssh)
  assert_valid_bash(script)
  assert "nohup ~/geojax-venv/bin/python -m geojax.train --config=configs/geo_r.py:3b" in script
  assert "--config.runtime.distributed=on" in script and "--config.workdir=runs/geo_r_3b" in script
  assert "> runs/geo_r_3b/logs/worker-$(hostname).log 2>&1" in script
  # the override with spaces and quotes survives as one argument on the host
  train = script.split("nohup ", 1)[1].split(" > ", 1)[0]
  assert shlex.split(train)[-1] == "--config.grpo.rewards={'geo_r_distance_paper': 1.0}"


def test_launch_without_distributed_and_custom_workdir():
  [ssh] = dry_run("launch", "--nodistributed", "--workdir=gs://bucket/runs/x", "--run_name=x")
  script = remote_script(ssh)
  assert "distributed" not in script and "--config.workdir=gs://bucket/runs/x" in script
  assert "runs/x/logs/worker-" in script


def test_status_logs_tensorboard_run_stop_delete():
  describe, ssh = dry_run("status")
  assert describe[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "describe", "geo-pod"]
  assert_valid_bash(remote_script(ssh))
  mkdir, scp = dry_run("logs", "--local_dir=/tmp/pl")
  assert mkdir == ["mkdir", "-p", "/tmp/pl/geo_r"]
  assert scp[5:7] == ["geo-pod:geojax/runs/geo_r/logs/*", "/tmp/pl/geo_r/"] and "--worker=all" in scp
  [tb] = dry_run("tensorboard", "--port=6007")
  assert "--worker=0" in tb and "--ssh-flag=-L6007:localhost:6007" in tb
  assert "tensorboard --logdir=runs/geo_r --port=6007" in remote_script(tb)
  [run] = dry_run("run", "--worker=0", extra=["python", "-m", "geojax.export", "--out=/tmp/hf model"])
  assert "--worker=0" in run
  assert remote_script(run).endswith("python -m geojax.export '--out=/tmp/hf model'")
  [run] = dry_run("run", extra=["ls runs | wc -l && echo done"])  # one argument: a shell script
  assert remote_script(run).endswith("&& ls runs | wc -l && echo done") and "--worker=all" in run
  [stop] = dry_run("stop")
  assert_valid_bash(remote_script(stop))
  [delete] = dry_run("delete")
  assert delete == ["gcloud", "compute", "tpus", "tpu-vm", "delete", "geo-pod", "--zone=us-central2-b",
                    "--project=my-proj", "--quiet"]
  [delete] = dry_run("delete", "--queued")
  assert delete[3:5] == ["queued-resources", "delete"] and "--force" in delete


def test_bad_usage():
  result = subprocess.run([sys.executable, "-m", "tpu.pod", "frobnicate", *BASE], cwd=REPO, capture_output=True,
                          text=True, timeout=60)
  assert result.returncode == 2 and "usage" in result.stderr
  with pytest.raises(ValueError, match="takes no arguments"):
    pod_lib.build_commands("create", pod_lib.Pod(name="x"), ["--config.a=1"])
  with pytest.raises(ValueError, match="needs --repo"):
    pod_lib.build_commands("install", pod_lib.Pod(name="x", source="git"))


def test_host_scripts_run_in_a_fake_home(tmp_path):
  """launch / status / stop scripts executed by bash as a host would, with a stand-in trainer."""
  home = tmp_path
  (home / "geojax").mkdir()
  venv_bin = home / "geojax-venv" / "bin"
  venv_bin.mkdir(parents=True)
  fake_python = venv_bin / "python"
  fake_python.write_text('#!/bin/bash\necho "args: $*"\n'
                         'echo "tokenizers_parallelism=$TOKENIZERS_PARALLELISM"\nexec sleep 30\n')
  fake_python.chmod(0o755)
  pod = pod_lib.Pod(name="x", run_name="t")
  env = dict(os.environ, HOME=str(home))

  def bash(script):
    return subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=30)

  started = bash(pod_lib.launch_script(pod, ["--config.grpo.rewards={'a b': 1.0}"]))
  assert started.returncode == 0 and "started t" in started.stdout, started.stderr
  host = subprocess.run(["hostname"], capture_output=True, text=True).stdout.strip()
  pid = int((home / "geojax" / "runs" / "t" / "logs" / f"worker-{host}.pid").read_text())
  try:
    log = home / "geojax" / "runs" / "t" / "logs" / f"worker-{host}.log"
    for _ in range(100):
      if log.exists() and "tokenizers_parallelism=false" in log.read_text():
        break
      time.sleep(0.05)
    assert ("args: -m geojax.train --config=configs/geo_r.py --config.workdir=runs/t "
            "--config.runtime.distributed=on --config.grpo.rewards={'a b': 1.0}") in log.read_text()
    again = bash(pod_lib.launch_script(pod, []))
    assert again.returncode == 1 and "already running" in again.stderr
    assert "t running" in bash(pod_lib.status_script(pod)).stdout
    assert "stopped t" in bash(pod_lib.stop_script(pod)).stdout
    for _ in range(100):
      if "not running" in bash(pod_lib.status_script(pod)).stdout:
        break
      time.sleep(0.05)
    assert "t not running" in bash(pod_lib.status_script(pod)).stdout
  finally:
    try:
      os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
      pass


@pytest.fixture
def trap_gcloud(tmp_path, monkeypatch):
  """A `gcloud` first on PATH that records any call: a dry run must leave the record empty."""
  calls = tmp_path / "gcloud_calls"
  fake = tmp_path / "bin" / "gcloud"
  fake.parent.mkdir()
  fake.write_text(f"#!/bin/sh\necho \"$@\" >> {calls}\n")
  fake.chmod(0o755)
  monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
  return calls


def run_pod(*argv):
  return subprocess.run([sys.executable, "-m", "tpu.pod", *argv], cwd=REPO, capture_output=True, text=True,
                        timeout=60, env=os.environ.copy())


@pytest.mark.parametrize("placement", ["before", "after", "after_with_value"])
@pytest.mark.parametrize("command", ["launch", "run", "status", "create"])
def test_dry_run_never_runs_gcloud_wherever_the_flag_stands(trap_gcloud, command, placement):
  pod = ["--name=geo-pod", "--zone=us-central2-b"]
  extra = {"launch": ["--config.grpo.steps=5"], "run": ["ls"]}.get(command, [])
  if placement == "before":
    argv = [command, *pod, "--dry_run", *(["--", *extra] if extra else [])]
  else:
    argv = [command, *pod, "--", *extra, "--dry_run" if placement == "after" else "--dry_run=true"]
  result = run_pod(*argv)
  assert result.returncode == 0, result.stderr
  assert result.stdout.startswith("gcloud ")
  assert not trap_gcloud.exists()
  if placement != "before":
    assert "--dry_run" not in result.stdout  # not passed on to the hosts
    assert "running none" in result.stderr


def test_pod_flag_after_separator_is_refused_for_launch(trap_gcloud):
  result = run_pod("launch", "--name=geo-pod", "--", "--config.grpo.steps=5", "--zone=us-central2-b")
  assert result.returncode == 2
  assert "--zone=us-central2-b is a tpu.pod flag" in result.stderr
  assert result.stdout == "" and not trap_gcloud.exists()
  result = run_pod("launch", "--name=geo-pod", "--", "--nodry_run")
  assert result.returncode == 2 and "ambiguous" in result.stderr and not trap_gcloud.exists()


def test_without_dry_run_gcloud_is_called(trap_gcloud):
  """The trap works: the same line without --dry_run reaches (the fake) gcloud."""
  result = run_pod("status", "--name=geo-pod", "--zone=us-central2-b")
  assert result.returncode == 0, result.stderr
  assert trap_gcloud.exists() and "geo-pod" in trap_gcloud.read_text()
