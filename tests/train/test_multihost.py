"""Two local processes x 4 CPU devices train exactly like one process x 8 devices (SFT, then 3 GRPO steps), each
process loading, decoding and scoring only its own rows of every global batch."""
import json
import os
import re
import socket
import subprocess
import sys

import numpy as np

from tests.train.helpers import ROOT, losses

DRIVER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "multihost_driver.py")


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _launch(process_id: int, n_processes: int, devices: int, port: int, workdir: str, data_dir: str):
  env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_COORDINATOR")}
  return subprocess.Popen([sys.executable, DRIVER, str(process_id), str(n_processes), str(devices), str(port),
                           workdir, data_dir], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)


def _finish(proc, timeout=420) -> str:
  try:
    out, _ = proc.communicate(timeout=timeout)
  except subprocess.TimeoutExpired:
    proc.kill()
    out, _ = proc.communicate()
  assert proc.returncode == 0, out[-4000:]
  return out


def _results(workdir: str) -> dict:
  with open(os.path.join(workdir, "results.json")) as f:
    return {label: {k: round(v, 4) for k, v in r.items() if k != "seconds"} for label, r in json.load(f).items()}


def _decoded(out: str, stage: str, processes: int) -> tuple[int, int]:
  """(process index, records decoded) from a learner's log line."""
  found = re.search(rf"\[{stage}\] process (\d+) of {processes} decoded (\d+) records", out)
  assert found, out[-2000:]
  return int(found.group(1)), int(found.group(2))


def test_two_processes_match_one_process(tmp_path, builtin_dir):
  single = str(tmp_path / "single")
  multi = str(tmp_path / "multi")
  port = _free_port()
  procs = [_launch(i, 2, 4, port, multi, builtin_dir) for i in range(2)]
  outs = [_finish(p) for p in procs]
  assert "devices 8 local 4" in outs[0] and "devices 8 local 4" in outs[1]
  out = _finish(_launch(0, 1, 8, 0, single, builtin_dir))
  assert "devices 8 local 8" in out
  for stage, steps in (("sft", 2), ("grpo", 3)):
    one, two = losses(single, stage), losses(multi, stage)
    assert sorted(one) == sorted(two) == list(range(1, steps + 1))
    np.testing.assert_allclose([two[s] for s in sorted(two)], [one[s] for s in sorted(one)], rtol=1e-4, atol=1e-6)
  # per-host data: each process decoded at most its half of the rows the steps consumed (4 of 8 SFT rows a step,
  # 1 of 2 GRPO prompts); one process reads whole bucketing windows
  for stage, steps, rows in (("sft", 2, 8), ("grpo", 3, 2)):
    counts = [_decoded(o, stage, 2) for o in outs]
    assert [c[0] for c in counts] == [0, 1] and all(1 <= c[1] <= steps * rows // 2 for c in counts), counts
    assert _decoded(out, stage, 1)[1] >= steps * rows
    print(f"{stage}: decoded per process {[c[1] for c in counts]} (2 processes), {_decoded(out, stage, 1)[1]} (1)")
  results = [_results(w) for w in (single, multi)]  # evaluation loads per host too (4 of the 8 examples each)
  assert all(re.search(r"\[eval after GRPO\] process \d of 2 decoded 4 records", o) for o in outs)
  assert results[0] == results[1] and set(results[0]) == {"after SFT", "after GRPO"}, results
  rewards_one, rewards_two = losses(single, "grpo", "reward"), losses(multi, "grpo", "reward")
  np.testing.assert_allclose([rewards_two[s] for s in (1, 2, 3)], [rewards_one[s] for s in (1, 2, 3)], rtol=1e-5)
  assert any(abs(losses(single, "grpo")[s]) > 0 for s in (1, 2, 3))  # the comparison is not of zeros
