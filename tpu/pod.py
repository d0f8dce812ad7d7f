"""Run geojax on a Cloud TPU VM or pod slice with gcloud: create, install, launch, watch, fetch logs, delete.

  python -m tpu.pod COMMAND --name=NAME [--zone=... --project=...] [flags] [-- extra arguments]

Commands:
  create       a TPU VM (or, with --queued, a queued resource) of --accelerator_type and --runtime_version
  install      put the code on every host (--source=local: this checkout's committed HEAD via git archive;
               --source=git: clone --repo at --ref) and pip install -e '.[tpu]' into ~/geojax-venv
  mount        mount the Cloud Storage bucket --bucket at ~/--mount_point on every host (gcsfuse), giving all
               hosts one shared directory for checkpoints
  launch       start `python -m geojax.train --config=CONFIG` on all hosts at once, detached (nohup), each
               host logging to runs/RUN/logs/worker-<hostname>.log; arguments after `--` are config overrides
  status       the TPU's state and, per host, whether the run is alive plus its last log lines
  logs         copy every host's log into --local_dir
  tensorboard  serve TensorBoard from host 0 and forward it to localhost:--port
  run          run the command after `--` on --worker hosts, in the code directory with the venv active (one
               quoted argument is taken as a shell script, so `-- "a && b"` works)
  stop         stop the run started by `launch` (its process id is kept per host)
  delete       delete the TPU VM (or queued resource)

--dry_run prints the commands instead of running them. Every process of a pod runs the same program;
`--config.runtime.distributed=on` makes geojax call jax.distributed.initialize(), which on Cloud TPU finds the
other hosts by itself.
"""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from typing import Sequence

from absl import app, flags

COMMANDS = ("create", "install", "mount", "launch", "status", "logs", "tensorboard", "run", "stop", "delete")

flags.DEFINE_string("name", None, "TPU VM name (the node id of a queued resource).")
flags.DEFINE_string("zone", "", "Zone, e.g. us-central2-b; empty: gcloud's default (gcloud config set compute/zone).")
flags.DEFINE_string("project", "", "Project; empty: gcloud's default project.")
flags.DEFINE_string("accelerator_type", "v5litepod-16", "TPU type and size, e.g. v4-32, v5litepod-16, v5p-32, v6e-16.")
flags.DEFINE_string("runtime_version", "v2-alpha-tpuv5-lite",
                    "TPU software version: tpu-ubuntu2204-base (v4), v2-alpha-tpuv5-lite (v5e), v2-alpha-tpuv5 "
                    "(v5p), v2-alpha-tpuv6e (v6e).")
flags.DEFINE_bool("spot", False, "Spot capacity (cheaper, may be preempted).")
flags.DEFINE_bool("reserved", False, "Use the project's reservation.")
flags.DEFINE_bool("queued", False, "Create through a queued resource (waits for capacity) instead of directly.")
flags.DEFINE_enum("source", "local", ["local", "git"], "Where install takes the code from.")
flags.DEFINE_string("repo", "", "Git URL for --source=git.")
flags.DEFINE_string("ref", "", "Git ref: for --source=local the commit archived (default HEAD), for --source=git "
                    "the branch, tag or commit checked out (default main).")
flags.DEFINE_string("remote_dir", "geojax", "Code directory on each host, relative to the home directory.")
flags.DEFINE_string("venv", "geojax-venv", "Virtual environment on each host, relative to the home directory.")
flags.DEFINE_string("config", "configs/geo_r.py", "Config file (path inside the code directory)[:variant].")
flags.DEFINE_string("run_name", "", "Name of the run's log directory runs/RUN_NAME; default: the config's name.")
flags.DEFINE_string("workdir", "", "--config.workdir of the run (checkpoints, TensorBoard); default runs/RUN_NAME "
                    "on each host. Pods need a directory all hosts share: a path under the `mount` point.")
flags.DEFINE_bool("distributed", True, "Pass --config.runtime.distributed=on (jax.distributed.initialize()).")
flags.DEFINE_string("bucket", "", "Cloud Storage bucket for `mount`, e.g. gs://my-bucket.")
flags.DEFINE_string("mount_point", "bucket", "Where `mount` mounts --bucket, relative to the home directory.")
flags.DEFINE_string("worker", "all", "Hosts for `run` and `tensorboard`: all, or an index (tensorboard: 0).")
flags.DEFINE_string("local_dir", "pod_logs", "Local directory `logs` copies into (a subdirectory per run).")
flags.DEFINE_integer("port", 6006, "Local port `tensorboard` forwards.")
flags.DEFINE_bool("dry_run", False, "Print the commands instead of running them.")
flags.mark_flag_as_required("name")
POD_FLAGS = frozenset(f.name for f in flags.FLAGS.get_flags_for_module(__name__))

FLAGS = flags.FLAGS


@dataclass(frozen=True)
class Pod:
  """Everything the command builders need; built from the flags (or directly, in tests)."""
  name: str
  zone: str = ""
  project: str = ""
  accelerator_type: str = "v5litepod-16"
  runtime_version: str = "v2-alpha-tpuv5-lite"
  spot: bool = False
  reserved: bool = False
  queued: bool = False
  source: str = "local"
  repo: str = ""
  ref: str = ""
  remote_dir: str = "geojax"
  venv: str = "geojax-venv"
  config: str = "configs/geo_r.py"
  run_name: str = ""
  workdir: str = ""
  distributed: bool = True

  @property
  def run(self) -> str:
    if self.run_name:
      return self.run_name
    path, _, variant = self.config.partition(":")
    stem = os.path.splitext(os.path.basename(path))[0]
    return f"{stem}_{variant}" if variant else stem

  @property
  def log_dir(self) -> str:
    """The run's log directory on each host, relative to the code directory."""
    return f"runs/{self.run}/logs"

  @property
  def python(self) -> str:
    return f"~/{self.venv}/bin/python"


def _location(pod: Pod) -> list[str]:
  return ([f"--zone={pod.zone}"] if pod.zone else []) + ([f"--project={pod.project}"] if pod.project else [])


def _capacity(pod: Pod) -> list[str]:
  if pod.spot and pod.reserved:
    raise ValueError("--spot and --reserved exclude each other")
  return ["--spot"] if pod.spot else ["--reserved"] if pod.reserved else []


def ssh(pod: Pod, command: str, worker: str = "all", ssh_flags: Sequence[str] = ()) -> list[str]:
  """gcloud tpu-vm ssh running `command` (a bash script) on `worker` hosts ("all" or an index)."""
  return (["gcloud", "compute", "tpus", "tpu-vm", "ssh", pod.name] + _location(pod) + [f"--worker={worker}"]
          + [f"--ssh-flag={f}" for f in ssh_flags] + [f"--command={command}"])


def create_commands(pod: Pod) -> list[list[str]]:
  capacity = _capacity(pod)
  if pod.queued:
    return [["gcloud", "compute", "tpus", "queued-resources", "create", pod.name, f"--node-id={pod.name}"]
            + _location(pod) + [f"--accelerator-type={pod.accelerator_type}",
                                f"--runtime-version={pod.runtime_version}"] + capacity]
  return [["gcloud", "compute", "tpus", "tpu-vm", "create", pod.name] + _location(pod)
          + [f"--accelerator-type={pod.accelerator_type}", f"--version={pod.runtime_version}"] + capacity]


def install_commands(pod: Pod, archive: str = "/tmp/geojax-src.tar.gz") -> list[list[str]]:
  code, venv = f"~/{pod.remote_dir}", f"~/{pod.venv}"
  commands = []
  if pod.source == "local":
    # Only committed files travel: every host runs exactly the commit that was archived.
    repo_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    commands.append(["git", "-C", repo_root, "archive", "--format=tar.gz", f"--output={archive}", pod.ref or "HEAD"])
    commands.append(["gcloud", "compute", "tpus", "tpu-vm", "scp", archive, f"{pod.name}:geojax-src.tar.gz"]
                    + _location(pod) + ["--worker=all"])
    fetch = f"mkdir -p {code} && tar -xzf ~/geojax-src.tar.gz -C {code}"
  else:
    if not pod.repo:
      raise ValueError("--source=git needs --repo")
    ref = shlex.quote(pod.ref or "main")
    fetch = (f"if [ ! -d {code}/.git ]; then git clone --quiet {shlex.quote(pod.repo)} {code}; fi && "
             f"git -C {code} fetch --quiet origin {ref} && git -C {code} checkout --quiet FETCH_HEAD")
  setup = (f"set -e; {fetch}; "
           f"if [ ! -x {venv}/bin/python ]; then python3 -m venv {venv}; fi; "
           f"{venv}/bin/pip install --quiet --upgrade pip; "
           f"cd {code} && {venv}/bin/pip install --quiet -e '.[tpu]' tensorboard; "
           f"{venv}/bin/python -c 'import jax; "
           f"print(jax.process_index(), jax.device_count(), jax.devices()[0].platform)'")
  commands.append(ssh(pod, setup))
  return commands


def train_command(pod: Pod, overrides: Sequence[str]) -> list[str]:
  """The argv every host runs: python -m geojax.train with the config and overrides."""
  args = [pod.python, "-m", "geojax.train", f"--config={pod.config}"]
  args.append(f"--config.workdir={pod.workdir or f'runs/{pod.run}'}")
  if pod.distributed:
    args.append("--config.runtime.distributed=on")
  return args + list(overrides)


def launch_script(pod: Pod, overrides: Sequence[str]) -> str:
  """Bash run on each host: start training detached from the ssh session, keep its pid, log per host."""
  log = f"{pod.log_dir}/worker-$(hostname).log"
  pid = f"{pod.log_dir}/worker-$(hostname).pid"
  train = " ".join(a if a.startswith("~/") and "'" not in a else shlex.quote(a) for a in train_command(pod, overrides))
  return (f"set -e; cd ~/{pod.remote_dir}; mkdir -p {pod.log_dir}; "
          f"if [ -f {pid} ] && kill -0 $(cat {pid}) 2>/dev/null; then "
          f"echo \"$(hostname): run {pod.run} already running\" >&2; exit 1; fi; "
          f"TOKENIZERS_PARALLELISM=false nohup {train} > {log} 2>&1 < /dev/null & "
          f"echo $! > {pid}; echo \"$(hostname): started {pod.run} (pid $!)\"")


def mount_script(bucket: str, mount_point: str) -> str:
  """Bash run on each host: install gcsfuse (Google's apt repository) if missing, mount `bucket`."""
  name = bucket[len("gs://"):] if bucket.startswith("gs://") else bucket
  name = name.strip("/")
  if not name or "/" in name:
    raise ValueError(f"--bucket must name a bucket (gs://NAME), got {bucket!r}")
  target = f"~/{mount_point}"
  keyring = "/usr/share/keyrings/cloud.google.asc"
  install = (f"curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg | sudo tee {keyring} > /dev/null && "
             f"echo \"deb [signed-by={keyring}] https://packages.cloud.google.com/apt "
             f"gcsfuse-$(lsb_release -c -s) main\" "
             f"| sudo tee /etc/apt/sources.list.d/gcsfuse.list > /dev/null && "
             f"sudo apt-get update -qq && sudo apt-get install -y -qq gcsfuse")
  return (f"set -e; if ! command -v gcsfuse > /dev/null; then {install}; fi; mkdir -p {target}; "
          f"if mountpoint -q {target}; then echo \"$(hostname): {target} already mounted\"; "
          f"else gcsfuse --implicit-dirs {shlex.quote(name)} {target} && "
          f"echo \"$(hostname): mounted {bucket} at {target}\"; fi")


def launch_commands(pod: Pod, overrides: Sequence[str]) -> list[list[str]]:
  return [ssh(pod, launch_script(pod, overrides))]


def status_script(pod: Pod) -> str:
  pid = f"{pod.log_dir}/worker-$(hostname).pid"
  log = f"{pod.log_dir}/worker-$(hostname).log"
  return (f"cd ~/{pod.remote_dir} 2>/dev/null || {{ echo \"$(hostname): not installed\"; exit 0; }}; "
          f"if [ -f {pid} ] && kill -0 $(cat {pid}) 2>/dev/null; then "
          f"echo \"$(hostname): {pod.run} running (pid $(cat {pid}))\"; "
          f"else echo \"$(hostname): {pod.run} not running\"; fi; "
          f"if [ -f {log} ]; then tail -n 5 {log}; fi")


def status_commands(pod: Pod) -> list[list[str]]:
  kind = ["queued-resources"] if pod.queued else ["tpu-vm"]
  describe = ["gcloud", "compute", "tpus"] + kind + ["describe", pod.name] + _location(pod)
  return [describe, ssh(pod, status_script(pod))]


def logs_commands(pod: Pod, local_dir: str) -> list[list[str]]:
  target = os.path.join(local_dir, pod.run)
  # each host's files carry its hostname, so copying all hosts into one directory overwrites nothing
  return [["mkdir", "-p", target],
          ["gcloud", "compute", "tpus", "tpu-vm", "scp", f"{pod.name}:{pod.remote_dir}/{pod.log_dir}/*", target + "/"]
          + _location(pod) + ["--worker=all"]]


def tensorboard_commands(pod: Pod, port: int, worker: str = "0") -> list[list[str]]:
  logdir = pod.workdir or f"runs/{pod.run}"
  serve = (f"cd ~/{pod.remote_dir} && ~/{pod.venv}/bin/tensorboard --logdir={shlex.quote(logdir)} "
           f"--port={port} --host=localhost")
  return [ssh(pod, serve, worker=worker, ssh_flags=[f"-L{port}:localhost:{port}"])]


def run_commands(pod: Pod, args: Sequence[str], worker: str = "all") -> list[list[str]]:
  if not args:
    raise ValueError("`run` needs the command after --")
  # one argument: a shell script as typed (pipes, &&); several: argv words, each quoted
  words = args[0] if len(args) == 1 else " ".join(shlex.quote(a) for a in args)
  script = f"cd ~/{pod.remote_dir} && source ~/{pod.venv}/bin/activate && {words}"
  return [ssh(pod, script, worker=worker)]


def stop_script(pod: Pod) -> str:
  pid = f"{pod.log_dir}/worker-$(hostname).pid"
  return (f"cd ~/{pod.remote_dir} || exit 0; "
          f"if [ -f {pid} ] && kill $(cat {pid}) 2>/dev/null; then echo \"$(hostname): stopped {pod.run}\"; "
          f"else echo \"$(hostname): {pod.run} was not running\"; fi; rm -f {pid}")


def stop_commands(pod: Pod) -> list[list[str]]:
  return [ssh(pod, stop_script(pod))]


def delete_commands(pod: Pod) -> list[list[str]]:
  if pod.queued:
    return [["gcloud", "compute", "tpus", "queued-resources", "delete", pod.name] + _location(pod)
            + ["--force", "--quiet"]]
  return [["gcloud", "compute", "tpus", "tpu-vm", "delete", pod.name] + _location(pod) + ["--quiet"]]


def build_commands(command: str, pod: Pod, args: Sequence[str] = (), *, worker: str = "all",
                   local_dir: str = "pod_logs", port: int = 6006, bucket: str = "",
                   mount_point: str = "bucket") -> list[list[str]]:
  """The local argv lists that carry out `command`."""
  if args and command not in ("launch", "run"):
    raise ValueError(f"`{command}` takes no arguments after --, got {list(args)}")
  if command == "create":
    return create_commands(pod)
  if command == "install":
    return install_commands(pod)
  if command == "mount":
    return [ssh(pod, mount_script(bucket, mount_point))]
  if command == "launch":
    return launch_commands(pod, args)
  if command == "status":
    return status_commands(pod)
  if command == "logs":
    return logs_commands(pod, local_dir)
  if command == "tensorboard":
    return tensorboard_commands(pod, port, worker="0" if worker == "all" else worker)
  if command == "run":
    return run_commands(pod, args, worker=worker)
  if command == "stop":
    return stop_commands(pod)
  if command == "delete":
    return delete_commands(pod)
  raise ValueError(f"unknown command {command!r}; expected one of {', '.join(COMMANDS)}")


def pod_from_flags() -> Pod:
  return Pod(name=FLAGS.name, zone=FLAGS.zone, project=FLAGS.project, accelerator_type=FLAGS.accelerator_type,
             runtime_version=FLAGS.runtime_version, spot=FLAGS.spot, reserved=FLAGS.reserved, queued=FLAGS.queued,
             source=FLAGS.source, repo=FLAGS.repo, ref=FLAGS.ref, remote_dir=FLAGS.remote_dir, venv=FLAGS.venv,
             config=FLAGS.config, run_name=FLAGS.run_name, workdir=FLAGS.workdir, distributed=FLAGS.distributed)


def _flag_name(word: str) -> str | None:
  """The flag a command-line word sets (`--dry_run=true` -> dry_run, `-nodry_run` -> nodry_run), or None."""
  match = re.fullmatch(r"--?([A-Za-z_][\w.]*)(=.*)?", word)
  return match.group(1) if match else None


def split_pod_flags(command: str, args: Sequence[str]) -> tuple[bool, list[str]]:
  """Reads pod flags that ended up after `--`: (dry run asked for, the remaining arguments).

  `--dry_run` is honoured wherever it stands, so appending it to a line never reaches a real TPU. Any other
  pod flag after `--` is refused for `launch` (whose arguments are training overrides, where it would
  silently do nothing); for `run` the words are a host command, which may have flags of its own.
  """
  dry_run, rest = False, []
  for word in args:
    name = _flag_name(word)
    if name == "dry_run" and word.split("=", 1)[-1].lower() not in ("false", "0"):
      dry_run = True
      continue
    if name in ("nodry_run", "dry_run"):
      raise ValueError(f"{word} after `--` is ambiguous for a pod command; put pod flags before `--`")
    if command == "launch" and name is not None and (name in POD_FLAGS
                                                     or name[2:] in POD_FLAGS and name.startswith("no")):
      raise ValueError(f"{word} is a tpu.pod flag but stands after `--`, where it would be passed to "
                       f"geojax.train; put it before `--`")
    rest.append(word)
  return dry_run, rest


def main(argv: Sequence[str]) -> int:
  if len(argv) < 2 or argv[1] not in COMMANDS:
    sys.stderr.write(f"usage: python -m tpu.pod {{{','.join(COMMANDS)}}} --name=NAME [flags] [-- args]\n")
    return 2
  command = argv[1]
  try:
    late_dry_run, args = split_pod_flags(command, argv[2:])
    dry_run = FLAGS.dry_run or late_dry_run
    commands = build_commands(command, pod_from_flags(), args, worker=FLAGS.worker, local_dir=FLAGS.local_dir,
                              port=FLAGS.port, bucket=FLAGS.bucket, mount_point=FLAGS.mount_point)
  except ValueError as e:
    sys.stderr.write(f"error: {e}\n")
    return 2
  if late_dry_run:
    sys.stderr.write("note: --dry_run after `--` taken as the pod flag: printing the commands, running none\n")
  # status reports whatever it can reach; the other commands stop at the first failure
  check = command != "status"
  for cmd in commands:
    print(shlex.join(cmd), flush=True)
    if dry_run:
      continue
    if cmd[0] == "mkdir":
      os.makedirs(cmd[-1], exist_ok=True)
      continue
    result = subprocess.run(cmd, check=False)
    if check and result.returncode:
      sys.stderr.write(f"error: exit status {result.returncode} from: {shlex.join(cmd)}\n")
      return result.returncode
  return 0


if __name__ == "__main__":
  app.run(main)
