"""The README's set-up commands are what CI runs, and its code examples run."""

import pathlib
import re

from attnlab import registry

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def _blocks(lang):
  return re.findall(rf"```{lang}\n(.*?)```", README, flags=re.S)


def test_ci_runs_exactly_the_readme_commands():
  install, test = [b.strip() for b in _blocks("bash")[:2]]
  ci = (ROOT / ".ci" / "run").read_text().splitlines()
  assert install.startswith("pip install") and "[test]" in install
  assert "pytest" in test
  assert install in ci and test in ci


def test_python_examples_run():
  namespace = {}
  try:
    for block in _blocks("python"):
      exec(compile(block, "README.md", "exec"), namespace)  # pylint: disable=exec-used
  finally:
    if "neg_l2" in registry.names("score"):
      registry.unregister("score", "neg_l2")
  assert namespace["out"].shape == (8, 16, 4, 48)
  assert namespace["aux"]["log_prob"].shape == (8, 4, 16)
