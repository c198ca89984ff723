"""The package's shape: the import graph has no cycle and no upward arrow, the model file stands alone (it is the
Hub's remote code), and importing or plotting leaves the user's matplotlib backend alone."""

import ast
import os
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "hf_gpt"
# What users run: command lines, the server, the demos. Library modules never import these.
APPLICATIONS = {"cli", "serve", "recipe_utils", "demo", "demo_transformers"}


def imports_of(path: Path) -> set[str]:
    """The hf_gpt modules a file imports, at its top or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            found |= {node.module.split(".")[0]} if node.module else {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("hf_gpt."):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found |= {alias.name.split(".")[1] for alias in node.names if alias.name.startswith("hf_gpt.")}
    return found - {path.stem}


def graph() -> dict[str, set[str]]:
    return {path.stem: imports_of(path) for path in PACKAGE.glob("*.py")}


def test_no_module_reaches_itself_through_its_imports():
    edges = graph()

    def reachable(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for module in edges.get(todo.pop(), ()):
                if module not in seen:
                    seen.add(module)
                    todo.append(module)
        return seen

    assert [module for module in edges if module in reachable(module)] == []


def test_library_modules_do_not_import_applications():
    upward = {module: deps & APPLICATIONS for module, deps in graph().items()
              if module not in APPLICATIONS and deps & APPLICATIONS}
    assert upward == {}


def test_the_model_file_and_the_embedded_world_stand_alone():
    edges = graph()
    assert edges["modeling_hf_gpt"] == {"configuration_hf_gpt"} and edges["configuration_hf_gpt"] == set()
    assert edges["world"] == set()  # the embedded data set: plain Python, usable as default data anywhere


def test_importing_and_plotting_keep_the_users_matplotlib_backend(tmp_path):
    script = ("import matplotlib, hf_gpt.ppo, hf_gpt.pretrain\n"
              "from hf_gpt.report import plot_panels\n"
              f"plot_panels({str(tmp_path / 'curve.png')!r}, [('t', 'x', 'y', {{'y': [(0, 1), (1, 2)]}})])\n"
              "print(matplotlib.get_backend())\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "MPLBACKEND": "svg"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split()[-1] == "svg"
    assert (tmp_path / "curve.png").read_bytes()[:4] == b"\x89PNG"
