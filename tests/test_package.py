"""The package as users install it: a wheel, installed without -e into a fresh venv, used from outside the repo."""

import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from hub_server import TOKEN, start

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    dist = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist),
                    str(ROOT)], check=True, capture_output=True, timeout=300)
    return next(dist.glob("hf_gpt-*.whl"))


@pytest.fixture(scope="module")
def wheel_venv(wheel, tmp_path_factory) -> Path:
    """A venv holding only the hf-gpt wheel; its dependencies (torch, transformers, ...) come from this venv's
    site-packages through a .pth line, which does not run this venv's editable-install hook."""
    venv = tmp_path_factory.mktemp("wheel") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    site = next((venv / "lib").glob("python*/site-packages"))
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "--no-deps",
                    "--no-index", "-q", str(wheel)], check=True, capture_output=True, timeout=300)
    return venv


def test_wheel_ships_the_presets_and_card_templates(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    presets = {p.name for p in (ROOT / "recipes" / "configs").glob("*.yaml")}
    cards = {p.name for p in (ROOT / "model_cards").glob("*.j2")}
    assert presets and {f"hf_gpt/recipe_configs/{n}" for n in presets} <= set(names)
    assert cards and {f"hf_gpt/model_cards/{n}" for n in cards} <= set(names)
    tasks = {p.name for p in (ROOT / "hf_gpt" / "lm_eval_tasks").iterdir() if p.suffix in (".yaml", ".py")}
    assert "utils.py" in tasks and {f"hf_gpt/lm_eval_tasks/{n}" for n in tasks} <= set(names)


def run_installed(venv: Path, tmp_path: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """`hf-gpt ARGS` from the venv, in a folder outside the repository."""
    env = {**(env or os.environ), "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""} if env is None else env
    return subprocess.run([str(venv / "bin" / "hf-gpt"), *args], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)


def test_installed_package_runs_a_preset_and_pushes_with_its_card(wheel_venv, tmp_path):
    # Where `import hf_gpt` would load from (found, not imported: the import itself is the preset's run below).
    where = subprocess.run([str(wheel_venv / "bin" / "python"), "-c",
                            "import importlib.util; print(importlib.util.find_spec('hf_gpt').origin)"],
                           cwd=tmp_path, capture_output=True, text=True, check=True)
    assert str(wheel_venv) in where.stdout and str(ROOT) not in where.stdout  # the wheel, not the checkout
    text = tmp_path / "corpus.txt"
    text.write_text("The capital of Korea is Seoul. 대한민국의 수도는 서울입니다.\n" * 400, encoding="utf-8")
    result = run_installed(wheel_venv, tmp_path, "pretrain", "--config", "tiny", "--data_files", str(text),
                           "--output_dir", "model", "--max_steps", "2", "--eval_steps", "2", "--save_steps", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "model" / "model.safetensors").exists()

    server, hub, url = start()
    try:
        env = {**os.environ, "HF_ENDPOINT": url, "HF_TOKEN": TOKEN, "HF_HUB_DISABLE_XET": "1", "HF_HUB_OFFLINE": "0",
               "HF_HOME": str(tmp_path / "home"), "PYTHONPATH": ""}
        result = run_installed(wheel_venv, tmp_path, "push", "model", "me/tiny-gpt", env=env)
        assert result.returncode == 0, result.stderr[-3000:]
    finally:
        server.shutdown()
    card = hub.repos["me/tiny-gpt"]["main"]["README.md"].decode()
    assert "library_name: transformers" in card and "hf-gpt" in card and "val_bpb" in card


def test_installed_package_evaluates_with_its_shipped_tasks(wheel_venv, model_folder, tokenizer, tmp_path):
    pytest.importorskip("lm_eval", reason="lm-evaluation-harness is in the dev extra (hf-gpt[eval])")
    folder = model_folder(tmp_path, tokenizer)
    done = run_installed(wheel_venv, tmp_path, "eval", str(folder), "--tasks", "world_facts_held_out", "--limit", "4")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "| world_facts_held_out | acc |" in done.stdout and (folder / "lm_eval_results.json").is_file()
