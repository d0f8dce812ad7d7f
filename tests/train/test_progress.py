"""The console progress bar: shown on a terminal only; log lines still reach a redirected stderr."""
import io
import sys

from geojax import runtime


class _Stream(io.StringIO):
  def __init__(self, tty: bool):
    super().__init__()
    self.tty = tty

  def isatty(self) -> bool:
    return self.tty


def test_bar_only_on_a_terminal(monkeypatch):
  for tty in (False, True):
    monkeypatch.setattr(sys, "stderr", _Stream(tty))
    bar = runtime.progress(5, desc="sft")
    assert bar.disable is (not tty)
    bar.update(5)
    bar.close()
    assert ("sft" in sys.stderr.getvalue()) is tty
  assert runtime.progress(5, enabled=False).disable


def test_log_lines_reach_a_redirected_stderr(monkeypatch):
  monkeypatch.setattr(sys, "stderr", _Stream(False))
  runtime.MetricWriter(None).log("[sft] step 10/20 loss=1")
  assert sys.stderr.getvalue() == "[sft] step 10/20 loss=1\n"
