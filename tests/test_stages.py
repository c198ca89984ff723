"""Every stage goes through the one skeleton (`hf_gpt.stage.Stage`): each writes the same `training_summary.json`
keys, and each resumes the same way: after a kill, the same command continues from the last complete checkpoint and
ends with the weights of a run that was never interrupted. Each run goes through the entry point users run
(`run_recipe`, as `recipes/<stage>.py` and `hf-gpt <stage>` do)."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hf_gpt import HfGptForCausalLM, HfGptForMaskedLM, HfGptForSequenceClassification
from hf_gpt.data import write_jsonl
from hf_gpt.recipe_utils import RECIPES, run_recipe
from hf_gpt.stage import Stage
from hf_gpt.tokenizer import special_token_ids

STEPS = 3
COMMON = ["--max_steps", str(STEPS), "--save_steps", "1", "--logging_steps", "1", "--disable_tqdm", "true",
          "--report_to", "none", "--seed", "5"]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, tokenizer, tiny_config) -> Path:
    root = tmp_path_factory.mktemp("stages")
    ids = special_token_ids(tokenizer)
    shape = dict(vocab_size=len(tokenizer), max_position_embeddings=96, **ids)
    torch.manual_seed(0)
    for folder, model in (("sft", HfGptForCausalLM(tiny_config(**shape))),
                          ("rm", HfGptForSequenceClassification(tiny_config(num_labels=1, **shape))),
                          ("bert", HfGptForMaskedLM(tiny_config(is_causal=False, **shape)))):
        model.save_pretrained(root / folder)
        tokenizer.save_pretrained(root / folder)
    (root / "text.txt").write_text("The capital of Korea is Seoul. 3 plus 4 is 7. " * 300)
    write_jsonl(root / "chat.jsonl", [{"prompt": f"Question {i}?", "completion": f"Answer {i}."} for i in range(32)])
    write_jsonl(root / "pairs.jsonl", [{"prompt": f"Question {i}?", "chosen": f"Good answer {i}.",
                                        "rejected": f"Bad {i}"} for i in range(32)])
    write_jsonl(root / "labelled.jsonl", [{"text": f"{'great' if i % 2 else 'awful'} movie {i}", "label": i % 2}
                                          for i in range(40)])
    return root


def stage_argv(stage: str, root: Path) -> list[str]:
    """The smallest run of each stage that still saves a checkpoint at every step."""
    batch = ["--per_device_train_batch_size", "4"]
    chat = ["--model_name_or_path", str(root / "sft"), *batch]
    online = [*chat, "--data_files", str(root / "pairs.jsonl"), "--reward_model_path", str(root / "rm")]
    return COMMON + {
        "pretrain": ["--config", "tiny", "--data_files", str(root / "text.txt"), "--eval_steps", "3", *batch],
        "mlm": ["--data_files", str(root / "text.txt"), "--tokenizer_name_or_path", str(root / "bert"),
                "--n_embd", "32", "--n_layer", "1", "--block_size", "32", "--eval_steps", "3", *batch],
        "sft": [*chat, "--data_files", str(root / "chat.jsonl"), "--eval_strategy", "no"],
        "reward": ["--model_name_or_path", str(root / "sft"), "--data_files", str(root / "pairs.jsonl"),
                   "--eval_strategy", "no", *batch],
        "ppo": [*online, "--response_length", "4"],
        "grpo": [*online, "--num_generations", "2", "--max_completion_length", "4"],
        "rloo": [*online, "--num_generations", "2", "--max_completion_length", "4"],
        "dpo": [*chat, "--data_files", str(root / "pairs.jsonl")],
        "classify": ["--model_name_or_path", str(root / "bert"), "--data_files", str(root / "labelled.jsonl"),
                     "--save_strategy", "steps", "--eval_strategy", "no", *batch],
        "translate": ["--n_embd", "32", "--save_strategy", "steps", *batch],
    }[stage]


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "model.safetensors")


def killed_after_first_checkpoint(finished: Path, copy: Path) -> Path:
    """What a kill right after the run's first checkpoint leaves: that checkpoint and the run record, nothing else."""
    shutil.copytree(finished, copy)
    checkpoints = sorted(copy.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    assert checkpoints and int(checkpoints[0].name.split("-")[1]) < STEPS, checkpoints
    for path in copy.iterdir():
        if path != checkpoints[0] and path.name != "run.json":
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    return copy


def test_every_recipe_is_a_stage():
    import importlib

    for stage, (module, _, _) in RECIPES.items():
        stages = [v for v in vars(importlib.import_module(module)).values()
                  if isinstance(v, type) and issubclass(v, Stage) and v is not Stage]
        assert stages, f"{module} defines no Stage subclass for {stage}"


@pytest.mark.slow
@pytest.mark.parametrize("stage", sorted(RECIPES))
def test_each_stage_writes_the_same_summary_and_resumes_to_the_same_weights(stage, inputs, tmp_path):
    argv = stage_argv(stage, inputs)
    full = tmp_path / "full"
    run_recipe(stage, [*argv, "--output_dir", str(full)])
    summary = json.loads((full / "training_summary.json").read_text())
    assert set(summary) == {"stage", "metrics", "data", "base_model", "steps", "throughput"}
    assert summary["steps"] == STEPS and summary["throughput"]["tokens_per_second"] > 0 and summary["metrics"]

    resumed = killed_after_first_checkpoint(full, tmp_path / "resumed")
    run_recipe(stage, [*argv, "--output_dir", str(resumed)])  # the same command, after the kill
    assert json.loads((resumed / "training_summary.json").read_text())["steps"] == STEPS
    expected, got = weights(full), weights(resumed)
    assert expected.keys() == got.keys()
    for name in expected:
        assert torch.equal(expected[name], got[name]), f"{stage}: {name} differs after the resume"


def test_the_stage_in_docs_runs_with_the_skeletons_guarantees(inputs, tmp_path, monkeypatch):
    """docs/adding_a_stage.md's distillation, as written there: trained, summarised, and a rerun into its finished
    folder refused, without a line of folder, resume or summary code of its own."""
    doc = (Path(__file__).parents[1] / "docs" / "adding_a_stage.md").read_text()
    (tmp_path / "distill.py").write_text(doc.split("```python\n")[1].split("```")[0])
    monkeypatch.syspath_prepend(str(tmp_path))
    import distill

    write_jsonl(inputs / "texts.jsonl", [{"text": f"The capital of Korea is Seoul. {i}"} for i in range(16)])
    out = tmp_path / "student"
    args = dict(output_dir=str(out), model_name_or_path=str(inputs / "sft"), teacher_path=str(inputs / "none"),
                data_files=[str(inputs / "texts.jsonl")], max_steps=2, per_device_train_batch_size=4,
                report_to="none", disable_tqdm=True)
    with pytest.raises((OSError, ValueError), match="teacher"):  # a missing teacher: nothing written
        distill.distill(distill.DistillConfig(**args))
    assert not out.exists()
    trainer = distill.distill(distill.DistillConfig(**{**args, "teacher_path": str(inputs / "sft")}))
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["stage"] == "distill" and summary["steps"] == 2 == trainer.state.global_step
    assert summary["metrics"]["train_loss"] == pytest.approx(0.0, abs=1e-6)  # the student starts as its teacher
    with pytest.raises(ValueError, match="holds a finished distillation model"):
        distill.distill(distill.DistillConfig(**{**args, "teacher_path": str(inputs / "sft")}))
