"""The benchmarks whose tables README quotes still run (a few steps each): a bench that breaks silently leaves README
quoting figures nobody can reproduce."""

import importlib.util
import json
import math
import re
import subprocess
from pathlib import Path

import pytest

from hf_gpt import world

pytestmark = pytest.mark.slow
BENCH = Path(__file__).resolve().parents[1] / "bench"


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_ppo_bench_runs_ours_on_the_demo_models_and_prompts(demo_run, tmp_path):
    bench = load("ppo_bench")
    out, _ = demo_run
    rows, prompts_file = bench.write_prompts(2, tmp_path)
    messages = [json.loads(line) for line in prompts_file.read_text().splitlines()]
    assert len(rows) == len(messages) == 2 * bench.BATCH
    training = {json.dumps(r["prompt"]) for r in world.ppo_prompts(2 * bench.BATCH)}
    assert {json.dumps(m) for m in messages} <= training  # the demo's own PPO prompts, as chat messages
    held_out = {q["prompt"] for q in world.questions("held_out")}
    assert not any(m[-1]["content"] in held_out for m in messages)
    try:
        python = bench.ensure_venv()
    except subprocess.CalledProcessError:
        pytest.skip("trl==1.12.0 (the bench's other side) could not be installed from PyPI")
    ours = bench.run_ours(out / "sft", out / "reward", rows, 2, tmp_path / "ours")
    trl = bench.run_trl(python, out / "sft", out / "reward", prompts_file, 2, tmp_path / "trl")
    for run in (ours, trl):
        assert len(run["scores"]) == len(run["kl"]) == 2 and run["seconds"] > 0
    text = bench.table({2: {"ours": [ours], bench.TRL: [trl]}})
    gain = ours["scores"][1] - ours["scores"][0]  # last quarter minus first quarter: one step each
    assert f"| 2 | ours | 1 | {ours['seconds'] / 2:.2f} | {gain:+.3f} | {ours['kl'][-1]:.3f} |" in text
    printed = float(re.search(r"step-time ratio \(ours / TRL\) ([0-9.]+)x", text).group(1))
    assert printed == pytest.approx(ours["seconds"] / trl["seconds"], abs=0.005)  # the table's ratio is measured


def test_ppo_bench_intervals_are_students_t_over_the_seeds():
    bench = load("ppo_bench")
    mean, half = bench.mean_interval([1.0, 2.0, 3.0, 4.0, 5.0])
    assert mean == 3.0 and half == pytest.approx(2.776 * math.sqrt(2.5) / math.sqrt(5))
    runs = [{"seconds": s, "scores": [0.0, g], "kl": [0.0, k]} for s, g, k in ((2, 1.0, 0.1), (4, 3.0, 0.3))]
    slower = [{**r, "seconds": 2 * r["seconds"]} for r in runs]
    text = bench.table({2: {"ours": runs, "ours, slower": slower, bench.TRL: slower}})
    assert "| 2 | ours | 2 | 1.50 | +2.000 ± 12.706 | 0.200 ± 1.271 |" in text
    assert "2 steps, ours: step-time ratio (ours / TRL) 0.50x (met" in text
    assert "mean gain +2.000 vs +2.000 (met" in text
    assert "2 steps, ours, slower: step-time ratio (ours / TRL) 1.00x (MISSED" in text  # each of ours against TRL
    # Welch: var of each mean 2/2 = 1, so the difference's half-width is t(df = 2) · √2; here 0 ± 6.085
    assert bench.difference_interval([1.0, 3.0], [1.0, 3.0]) == pytest.approx((0.0, 4.303 * math.sqrt(2)))
    assert "difference +0.000 ± 6.085, within the seeds' noise" in text
    diff, half = bench.difference_interval([5.0, 5.1, 4.9], [1.0, 1.2, 0.8])
    assert diff == pytest.approx(4.0) and half < diff  # clearly apart


def test_ppo_bench_variants_are_ppo_config_fields_read_as_their_types():
    bench = load("ppo_bench")
    assert bench.parse_variant("default") == {}
    assert bench.parse_variant("max_grad_norm=0,adam_epsilon=1e-8,whiten_rewards=true,num_ppo_epochs=4") == {
        "max_grad_norm": 0.0, "adam_epsilon": 1e-8, "whiten_rewards": True, "num_ppo_epochs": 4}
    assert bench.parse_variant("missing_eos_penalty=none") == {"missing_eos_penalty": None}
    linear = bench.parse_variant("lr_scheduler_type=linear")
    config = bench.ppo_config(Path("sft"), Path("rm"), 3, Path("out"), **linear)
    assert (config.lr_scheduler_type, config.per_device_train_batch_size, config.max_steps) == ("linear", 16, 3)
    for spec, message in (("cliprange", "not field=value"), ("no_such_field=1", "not field=value"),
                          ("whiten_rewards=yes", "must be bool"), ("num_ppo_epochs=1.5", "must be int")):
        with pytest.raises(ValueError, match=message):
            bench.parse_variant(spec)


def test_pretrain_bench_runs_the_reference_and_the_preset(shared_data, tmp_path, monkeypatch, capsys):
    data = shared_data("tinyshakespeare/input.txt")
    monkeypatch.chdir(tmp_path)
    bench = load("pretrain_bench")
    figures = bench.main(["--data_files", str(data), "--max_steps", "4", "--eval_steps", "2"], reference_steps=4)
    printed = capsys.readouterr().out
    ours, reference = figures["ours"], figures["reference"]
    assert ours["steps"] == reference["steps"] == 4
    ratio = ours["nats_per_char"] / reference["nats_per_char"]
    assert (f"| hf-gpt `shakespeare` preset, whole run (BPE training, evaluations, saving included) | 4 | "
            f"{ours['seconds']:.0f} | {ours['nats_per_char']:.3f} | {ratio:.3f} |") in printed
    # The reference's 4 steps take under a second: no hf-gpt evaluation ends within that, so no equal-time row.
    assert figures["at_equal_time"] is None and "MISSED" in printed
    # 4 steps: both far from trained, and in nats per character: the reference near ln(65 characters) = 4.17
    assert 3.5 < reference["nats_per_char"] < 4.6 and ours["nats_per_char"] > math.log(2)


def test_pretrain_ablation_scores_each_variant_against_one_reference(shared_data, tmp_path, monkeypatch, capsys):
    data = shared_data("tinyshakespeare/input.txt")
    monkeypatch.chdir(tmp_path)
    bench = load("pretrain_bench")
    reference = {"steps": 2000, "seconds": 3600.0, "nats_per_char": 4.0}  # measured in the test above; an hour here
    figures = bench.ablation(["preset", "AdamW"], None, ["--data_files", str(data), "--max_steps", "4", "--eval_steps",
                                                         "2"], reference=reference)
    printed = capsys.readouterr().out
    assert list(figures["runs"]) == ["preset", "AdamW"]
    reference = reference["nats_per_char"]
    for name, run in figures["runs"].items():
        at = run["at_equal_time"]  # 4 steps end within the hour
        assert at is not None and at["steps"] == 4
        assert f"| {name} | {at['nats_per_char']:.3f} (4) | {at['nats_per_char'] / reference:.3f} |" in printed
    # nanoGPT's choices reached the variant (the preset has Muon and RoPE):
    assert figures["runs"]["preset"]["ours"]["nats_per_char"] != figures["runs"]["AdamW"]["ours"]["nats_per_char"]
    assert "best: " in printed


def test_nanogpt_reference_learns_characters():
    text = "to be or not to be, that is the question. " * 400
    bench = load("pretrain_bench")
    before, after = bench.nanogpt_reference(text, steps=1), bench.nanogpt_reference(text, steps=60)  # 2.81 → 0.98
    assert before["nats_per_char"] > 2.0 and after["nats_per_char"] < 0.5 * before["nats_per_char"]


def test_gpu_check_runs_its_steps_tiny_on_the_cpu(tmp_path):
    """bench/gpu_check.sh, the one script a lent GPU runs, in its CPU smoke mode: every step's command line still
    parses and runs (the bench, the GPU tests' selection, the gpt2-small preset through the recipe), so a renamed
    flag or test is found here, not during a 15-minute lease."""
    import os
    import subprocess
    import sys

    out = tmp_path / "out"
    env = {**os.environ, "PYTHON": sys.executable, "GPU_CHECK_SMOKE": "1", "OUT": str(out), "WORK": str(tmp_path)}
    result = subprocess.run(["bash", str(BENCH / "gpu_check.sh")], cwd=BENCH.parent, env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert (out / "status.txt").read_text().split("\n")[:3] == ["bench 0", "tests 0", "gpt2-small 0"]
    assert "every requirement of hf-gpt is met" in (out / "env.txt").read_text()
    bench = (out / "gpu_bench.txt").read_text()
    for row in ("A hf-gpt (Trainer)", "B GPT2LMHeadModel (Trainer)", "C plain loop (nanoGPT-style)"):
        assert f"| {row} |" in bench
    assert "n/a (no peak)" in bench and "Decoding, batch 2, 4 new tokens" in bench
    # The flash kernel, bf16 + fp16 pretraining on the GPU, PPO in bf16 and fp16: each test the GPU run names exists.
    found = (out / "gpu_tests.txt").read_text().split()
    assert found == ["tests/test_gpu.py", "tests/test_gpu.py", "tests/test_ppo.py"]
    log = (out / "gpt2_small.txt").read_text()
    assert "tokens_per_second" in log and "eval_loss" in log
    summary = json.loads((out / "gpt2_small_summary.json").read_text())
    assert summary["throughput"]["tokens_per_second"] > 0 and summary["steps"] == 4


def test_gpu_env_names_each_unmet_requirement(monkeypatch):
    """What the GPU run checks first: here everything is met; an image with an older transformers and no trl is not."""
    gpu_env = load("gpu_env")
    assert gpu_env.unmet_requirements() == []
    real = gpu_env.version

    def image_version(name: str) -> str:
        if name == "trl":
            raise gpu_env.PackageNotFoundError(name)
        return "5.17.0" if name == "transformers" else real(name)

    monkeypatch.setattr(gpu_env, "version", image_version)
    unmet = gpu_env.unmet_requirements()
    assert any(u.startswith("transformers") and u.endswith("(found 5.17.0)") for u in unmet)
    assert any(u.startswith("trl") and u.endswith("(missing)") for u in unmet)
