"""The test suite's own machinery: `make test` spreads tests over pytest-xdist workers and relies on `xdist_group`
to train the CI-scale demo once and to keep README command chains in one sandbox."""

import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def test_xdist_groups_share_a_worker(tmp_path):
    pytest.importorskip("xdist", reason="pytest-xdist (dev extra) runs `make test`")
    (tmp_path / "test_groups.py").write_text(
        "import os, pytest\n"
        "@pytest.mark.parametrize('i', [pytest.param(i, marks=pytest.mark.xdist_group('g')) for i in range(4)])\n"
        "def test_grouped(i):\n"
        "    open(f'worker-{i}', 'w').write(os.environ['PYTEST_XDIST_WORKER'])\n"
        "def test_free(): pass\n")
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-n", "2", "--dist", "loadgroup", "-p",
                             "no:cacheprovider", str(tmp_path / "test_groups.py")],
                            capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stdout[-2000:]
    workers = {(tmp_path / f"worker-{i}").read_text() for i in range(4)}
    assert len(workers) == 1, f"grouped tests ran in workers {workers}: loadgroup is not honoured\n{result.stdout}"
