"""Past one process, for real: each test launches the README's command (`accelerate launch` with a config from
recipes/accelerate) as several CPU processes (gloo) and compares with one process on the same global batch.

- FSDP2 (recipes/accelerate/fsdp.yaml, changed only in process count and mixed precision, with HF_GPT_FSDP_ON_CPU=1):
  pretraining, SFT and the reward model shard their parameters (each rank holds half), give one process's losses,
  resume from a sharded checkpoint, and leave a plain model folder that loads as remote code.
- Several machines (recipes/accelerate/multi_node.yaml): two "machines" of one process each on 127.0.0.1.
- PPO in two data-parallel processes and in FSDP2, DPO in two data-parallel processes: one process's curve; PPO
  resumes after a kill.
"""

import json
import os
import re
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hf_gpt.data import write_jsonl
from hf_gpt.recipe_utils import run_recipe

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("distributed")]

REPO = Path(__file__).parents[1]
ACCELERATE = REPO / "recipes" / "accelerate"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(config: str, script: str, args: list[str], processes: int = 2, fsdp_on_cpu: bool = False,
           extra: tuple = (), background: bool = False):
    """`accelerate launch --config_file recipes/accelerate/<config>.yaml` on CPU processes (no GPU visible)."""
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ACCELERATE / f"{config}.yaml"),
               "--num_processes", str(processes), *extra, script, *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1"}
    if fsdp_on_cpu:
        env["HF_GPT_FSDP_ON_CPU"] = "1"
    if background:
        return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)


def ranks_said(stderr: str) -> str:
    ranks = [line for line in stderr.splitlines() if line.startswith("[rank")]
    return "\n".join(ranks[-40:]) or stderr[-3000:]


def fsdp(script: str, args: list[str], state_dict_type: str = "FULL_STATE_DICT") -> subprocess.CompletedProcess:
    """recipes/accelerate/fsdp.yaml on two CPU processes in fp32: only the process count and precision change."""
    result = launch("fsdp", script, args, fsdp_on_cpu=True, extra=(
        "--mixed_precision", "no", "--main_process_port", "0", "--fsdp_state_dict_type", state_dict_type))
    assert result.returncode == 0, ranks_said(result.stderr)
    return result


def history(out: Path, checkpoint: str) -> list[dict]:
    return json.loads((out / checkpoint / "trainer_state.json").read_text())["log_history"]


def train_losses(out: Path, checkpoint: str) -> dict[int, float]:
    return {h["step"]: h["loss"] for h in history(out, checkpoint) if "loss" in h}


def assert_same_losses(mine: dict, reference: dict, steps=None, tolerance: float = 1e-5) -> None:
    steps = sorted(reference) if steps is None else steps
    assert set(steps) <= mine.keys(), (mine, reference)
    for step in steps:
        assert mine[step] == pytest.approx(reference[step], abs=tolerance), (step, mine, reference)


def as_if_killed_after_checkpoint_3(out: Path) -> None:
    """The folder a 6-step run killed after its step-3 checkpoint leaves: no checkpoint-6, no final files."""
    import shutil

    shutil.rmtree(out / "checkpoint-6")
    for path in out.iterdir():
        if path.is_file() and path.name not in ("run.json", ".hf-gpt.lock"):
            path.unlink()


def assert_sharded(stdout: str) -> None:
    """Every rank reported the FSDP type and holds about half of the parameters (uneven rows differ by one)."""
    # Two processes print at once: their lines may run together, so read them as matches, not as lines.
    held = re.findall(r"\[rank \d\] FSDP: this rank holds ([\d,]+) of the model's ([\d,]+) parameters", stdout)
    assert len(held) == 2, stdout[-2000:]
    shares, totals = ([int(n.replace(",", "")) for n in column] for column in zip(*held))
    assert sum(shares) == totals[0] == totals[1] and abs(shares[0] - shares[1]) <= 0.02 * totals[0], held


REMOTE = textwrap.dedent("""
    import json, sys
    sys.modules["hf_gpt"] = None  # only the folder's own code may run
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification
    folder, kind = sys.argv[1], sys.argv[2]
    cls = AutoModelForCausalLM if kind == "lm" else AutoModelForSequenceClassification
    model = cls.from_pretrained(folder, trust_remote_code=True).eval()
    with torch.no_grad():
        print(json.dumps(model(torch.tensor([[5, 6, 7, 8, 9]])).logits.tolist()))
""")


def assert_loads_as_remote_code(folder: Path, reference_folder: Path, kind: str = "lm") -> None:
    """The saved folder names our code (no torch FSDP module) and gives, as remote code without hf_gpt, the logits of
    the one-process run's model (the same training, so the same weights)."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    import hf_gpt  # noqa: F401  (AutoModel below loads the reference natively)

    config = json.loads((folder / "config.json").read_text())
    ours = ("modeling_hf_gpt.", "configuration_hf_gpt.")
    assert all(target.startswith(ours) for target in config["auto_map"].values())
    assert config["architectures"][0].startswith("HfGptFor")
    assert not list(folder.glob("_fsdp*.py")) and (folder / "modeling_hf_gpt.py").is_file()
    result = subprocess.run([sys.executable, "-c", REMOTE, str(folder), kind], capture_output=True, text=True,
                            timeout=300, env={**os.environ, "PYTHONPATH": ""}, cwd=folder)
    assert result.returncode == 0, result.stderr[-3000:]
    cls = AutoModelForCausalLM if kind == "lm" else AutoModelForSequenceClassification
    reference = cls.from_pretrained(reference_folder).eval()
    with torch.no_grad():
        expected = reference(torch.tensor([[5, 6, 7, 8, 9]])).logits
    torch.testing.assert_close(torch.tensor(json.loads(result.stdout.strip().splitlines()[-1])), expected,
                               atol=1e-4, rtol=1e-4)


# ------------------------------------------------------------------ inputs


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, tokenizer, model_folder):
    root = tmp_path_factory.mktemp("distributed")
    text = root / "text.txt"
    text.write_text("The capital of Korea is Seoul. 3 plus 4 is 7. Paris is in France. " * 120)
    rows = write_jsonl(root / "rows.jsonl", [{"prompt": f"Question {i}?", "completion": f"Answer {i}."}
                                              for i in range(64)])
    pairs = write_jsonl(root / "pairs.jsonl", [{"prompt": f"Question {i}?", "chosen": f"Good answer {i}.",
                                                "rejected": f"Bad {i}"} for i in range(64)])
    tokenizer.save_pretrained(root / "tok")
    return {"root": root, "text": str(text), "rows": rows, "pairs": pairs, "base": model_folder(root, tokenizer),
            "tok": root / "tok"}


def pretrain_args(inputs: dict, out: Path, batch: int) -> list[str]:
    return ["--config", "tiny", "--data_files", inputs["text"], "--output_dir", str(out), "--max_steps", "6",
            "--save_steps", "3", "--eval_steps", "3", "--logging_steps", "1", "--per_device_train_batch_size",
            str(batch), "--disable_tqdm", "true"]


def stage_args(inputs: dict, data: str, out: Path, batch: int) -> list[str]:
    return ["--model_name_or_path", str(inputs["base"]), "--data_files", data, "--output_dir", str(out),
            "--max_steps", "6", "--save_steps", "3", "--eval_steps", "3", "--logging_steps", "1",
            "--per_device_train_batch_size", str(batch), "--disable_tqdm", "true"]


@pytest.fixture(scope="module")
def one_process_pretraining(inputs) -> Path:
    out = inputs["root"] / "pretrain-1"
    run_recipe("pretrain", pretrain_args(inputs, out, batch=8))
    return out


# ------------------------------------------------------------------ FSDP2


def test_fsdp_pretraining_shards_matches_one_process_and_resumes(inputs, one_process_pretraining):
    """Sharded checkpoints (SHARDED_STATE_DICT): the final folder is still a whole model; a rerun after a kill
    following checkpoint-3 resumes from the sharded checkpoint to the same losses."""
    out = inputs["root"] / "pretrain-fsdp"
    result = fsdp(str(REPO / "recipes" / "pretrain.py"), pretrain_args(inputs, out, batch=4), "SHARDED_STATE_DICT")
    assert_sharded(result.stdout)
    reference = train_losses(one_process_pretraining, "checkpoint-6")
    assert_same_losses(train_losses(out, "checkpoint-6"), reference)
    assert not (out / "checkpoint-3" / "model.safetensors").exists()  # the checkpoints really are sharded
    assert_loads_as_remote_code(out, one_process_pretraining)
    as_if_killed_after_checkpoint_3(out)  # the same command resumes from the sharded checkpoint
    fsdp(str(REPO / "recipes" / "pretrain.py"), pretrain_args(inputs, out, batch=4), "SHARDED_STATE_DICT")
    assert_same_losses(train_losses(out, "checkpoint-6"), reference, steps=[4, 5, 6])
    assert json.loads((out / "training_summary.json").read_text())["steps"] == 6


@pytest.mark.parametrize("stage, data, kind", [("sft", "rows", "lm"), ("reward", "pairs", "score")])
def test_fsdp_sft_and_reward_match_one_process(inputs, stage, data, kind):
    """FULL_STATE_DICT checkpoints. The two-process run trains over the one-process run's finished folder with
    --overwrite_output_dir true: rank 0 alone clears it (the others wait), and nothing is read half-written."""
    out = inputs["root"] / f"{stage}-fsdp"
    run_recipe(stage, stage_args(inputs, inputs[data], out, batch=8))
    reference = train_losses(out, "checkpoint-6")
    import shutil

    shutil.copytree(out, inputs["root"] / f"{stage}-1")
    result = fsdp(str(REPO / "recipes" / f"{stage}.py"),
                  [*stage_args(inputs, inputs[data], out, batch=4), "--overwrite_output_dir", "true"])
    assert_sharded(result.stdout)
    assert_same_losses(train_losses(out, "checkpoint-6"), reference)
    assert_loads_as_remote_code(out, inputs["root"] / f"{stage}-1", kind)


# ------------------------------------------------------------------ several machines


def test_two_machines_match_one_process(inputs, one_process_pretraining):
    """recipes/accelerate/multi_node.yaml: machine ranks 0 and 1, one process each, static rendezvous on 127.0.0.1."""
    out, port = inputs["root"] / "pretrain-2-machines", free_port()
    machines = [launch("multi_node", str(REPO / "recipes" / "pretrain.py"), pretrain_args(inputs, out, batch=4),
                       extra=("--machine_rank", str(rank), "--main_process_port", str(port)), background=True)
                for rank in (0, 1)]
    results = [machine.communicate(timeout=600) for machine in machines]
    for machine, (_, err) in zip(machines, results):
        assert machine.returncode == 0, ranks_said(err)
    assert_same_losses(train_losses(out, "checkpoint-6"), train_losses(one_process_pretraining, "checkpoint-6"),
                       tolerance=2e-3)
    # Validation bits per byte are token-weighted over the gathered, de-duplicated eval set, so they agree closely
    # (Trainer's own eval_loss averages batch means that include DDP's padding duplicates).
    bpb = lambda folder: [h["eval_bpb"] for h in history(folder, "checkpoint-6") if "eval_bpb" in h]
    assert bpb(out) == pytest.approx(bpb(one_process_pretraining), rel=1e-5)
    assert (out / "model.safetensors").is_file()


# ------------------------------------------------------------------ PPO and DPO in two processes


DRIVER = str(Path(__file__).with_name("ppo_driver.py"))


def ppo_result(stdout: str) -> dict:
    found = [json.loads(line[7:]) for line in stdout.splitlines() if line.startswith("RESULT ")]
    assert len(found) == 1, stdout[-2000:]  # one main process
    return found[0]


def test_ppo_in_two_processes_repeats_one_and_resumes_after_a_kill(inputs):
    """Two data-parallel processes of 4 rollouts give one process's score and KL curve with 8 (rollouts sampled by
    the Gumbel-max trick from per-rollout generators; whitening and loss means over every process's tokens); so do
    two FSDP2 processes, whose final policy loads as remote code; a run killed after checkpoint-2 and restarted ends
    on the same curve."""
    one = subprocess.run([sys.executable, DRIVER, str(inputs["tok"]), str(inputs["root"] / "ppo-1"), "8"],
                         capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert one.returncode == 0, one.stderr[-3000:]
    reference = ppo_result(one.stdout)
    two = launch("multi_cpu", DRIVER, [str(inputs["tok"]), str(inputs["root"] / "ppo-2"), "4"],
                 extra=("--main_process_port", "0"))
    assert two.returncode == 0, ranks_said(two.stderr)
    result = ppo_result(two.stdout)
    assert result["processes"] == 2 and result["steps"] == reference["steps"] == 4
    assert result["scores"] == pytest.approx(reference["scores"], abs=1e-6)
    assert result["kl"] == pytest.approx(reference["kl"], abs=1e-4)
    sharded = launch("fsdp", DRIVER, [str(inputs["tok"]), str(inputs["root"] / "ppo-fsdp"), "4"], fsdp_on_cpu=True,
                     extra=("--mixed_precision", "no", "--main_process_port", "0"))
    assert sharded.returncode == 0, ranks_said(sharded.stderr)
    result = ppo_result(sharded.stdout)  # tied embeddings stay tied through Accelerate's FSDP2 rebuild from meta
    assert result["scores"] == pytest.approx(reference["scores"], abs=1e-6)
    assert result["kl"] == pytest.approx(reference["kl"], abs=1e-4)
    assert_loads_as_remote_code(inputs["root"] / "ppo-fsdp", inputs["root"] / "ppo-1")
    killed = launch("multi_cpu", DRIVER, [str(inputs["tok"]), str(inputs["root"] / "ppo-killed"), "4", "4", "2"],
                    extra=("--main_process_port", "0"))
    assert killed.returncode != 0 and (inputs["root"] / "ppo-killed" / "checkpoint-2" / "ppo_state.json").is_file()
    resumed = launch("multi_cpu", DRIVER, [str(inputs["tok"]), str(inputs["root"] / "ppo-killed"), "4"],
                     extra=("--main_process_port", "0"))
    assert resumed.returncode == 0, ranks_said(resumed.stderr)
    again = ppo_result(resumed.stdout)
    assert again["scores"] == pytest.approx(reference["scores"], abs=1e-6)
    assert again["kl"] == pytest.approx(reference["kl"], abs=1e-4)


def test_dpo_in_two_processes_repeats_one(inputs):
    out = inputs["root"] / "dpo-1"
    args = lambda folder, batch: ["--model_name_or_path", str(inputs["base"]), "--data_files", inputs["pairs"],
                                  "--output_dir", str(folder), "--max_steps", "4", "--save_steps", "2",
                                  "--logging_steps", "1", "--per_device_train_batch_size", str(batch),
                                  "--disable_tqdm", "true"]
    run_recipe("dpo", args(out, 8))
    two = launch("multi_cpu", str(REPO / "recipes" / "dpo.py"), args(inputs["root"] / "dpo-2", 4),
                 extra=("--main_process_port", "0"))
    assert two.returncode == 0, ranks_said(two.stderr)
    assert_same_losses(train_losses(inputs["root"] / "dpo-2", "checkpoint-4"), train_losses(out, "checkpoint-4"))
    final = load_file(inputs["root"] / "dpo-2" / "model.safetensors")
    assert final.keys() == load_file(out / "model.safetensors").keys()


# ------------------------------------------------------------------ Muon in two processes


def test_muon_in_two_processes_repeats_one_and_resumes(inputs):
    """--muon true under `accelerate launch` (two data-parallel processes of 4 rows): DDP averages the gradients before
    Muon orthogonalises them, so the losses are one process's with 8 rows; a rerun after checkpoint-6 is deleted
    resumes from checkpoint-3 (both optimizers' states) to the same losses."""
    muon = ["--muon", "true", "--muon_learning_rate", "0.02"]
    one, two = inputs["root"] / "muon-1", inputs["root"] / "muon-2"
    run_recipe("pretrain", [*pretrain_args(inputs, one, batch=8), *muon])
    reference = train_losses(one, "checkpoint-6")
    assert reference[6] < reference[1]

    def run_two() -> None:
        result = launch("multi_cpu", str(REPO / "recipes" / "pretrain.py"),
                        [*pretrain_args(inputs, two, batch=4), *muon], extra=("--main_process_port", "0"))
        assert result.returncode == 0, ranks_said(result.stderr)

    run_two()
    assert_same_losses(train_losses(two, "checkpoint-6"), reference, tolerance=1e-4)
    groups = torch.load(two / "checkpoint-3" / "optimizer.pt", weights_only=True)["param_groups"]
    assert sorted(g["use_muon"] for g in groups) == [False, False, True]  # Muon really ran under the launcher
    as_if_killed_after_checkpoint_3(two)
    run_two()
    assert_same_losses(train_losses(two, "checkpoint-6"), reference, steps=[4, 5, 6], tolerance=1e-4)
