"""setup.py's extras cover the commands the README tells users to run."""
import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _extras() -> dict:
  tree = ast.parse((ROOT / "setup.py").read_text())
  for node in tree.body:
    if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "EXTRAS" for t in node.targets):
      return ast.literal_eval(node.value)
  raise AssertionError("no EXTRAS in setup.py")


def test_tensorboard_comes_with_the_extra_the_readme_names():
  with_tensorboard = {name: reqs for name, reqs in _extras().items()
                      if any(r.split("==")[0] == "tensorboard" for r in reqs)}
  assert with_tensorboard == {"viz": ["tensorboard==2.21.0"]}  # pinned to a version the registry serves
  readme = (ROOT / "README.md").read_text()
  assert 'pip install -e ".[viz]"     # TensorBoard' in readme
  assert '(`pip install -e ".[viz]"`, then `tensorboard --logdir runs/`)' in readme
