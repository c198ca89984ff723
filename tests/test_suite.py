"""The test suite's own machinery: `make test` spreads tests over pytest-xdist workers; the suite's conftest groups
the tests of the CI-scale demo run so that one worker trains it once."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent

pytestmark = pytest.mark.slow


RECORDER = """
import json, os, pytest

@pytest.hookimpl(trylast=True)  # after the suite's own conftest hook
def pytest_collection_modifyitems(items):
    groups = {item.nodeid: [m.args[0] for m in item.iter_markers("xdist_group")] for item in items
              if "demo_run" in item.fixturenames}
    open(os.environ["GROUPS_OUT"], "w").write(json.dumps(groups))
"""


def test_every_test_of_the_demo_run_shares_one_worker_group(tmp_path):
    """The suite's conftest puts every test that reads the CI-scale demo run into one xdist group, so `make test`
    trains that run once: checked over the real suite as collected, so a new test using it is covered too."""
    (tmp_path / "group_recorder.py").write_text(RECORDER)
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "GROUPS_OUT": str(tmp_path / "groups.json")}
    result = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "group_recorder",
                             "-p", "no:cacheprovider", str(TESTS)], capture_output=True, text=True, env=env,
                            timeout=300, cwd=TESTS.parent)
    assert result.returncode == 0, result.stdout[-2000:]
    groups = json.loads((tmp_path / "groups.json").read_text())
    assert len({node.split("::")[0] for node in groups}) >= 2, groups  # the demo's tests and the benches'
    assert all(marks == ["demo"] for marks in groups.values()), groups
