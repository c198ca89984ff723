"""GRPO, RLOO (online, with our RM or a reward function) and DPO (offline, on pairs) from TRL run on hf_gpt."""

import json
from pathlib import Path

import pytest
import torch

from hf_gpt import HfGptForCausalLM, HfGptForSequenceClassification
from hf_gpt.loading import load_reward_function
from hf_gpt.tokenizer import special_token_ids
from hf_gpt.trl_methods import (
    DPORecipeConfig,
    GRPORecipeConfig,
    RLOORecipeConfig,
    dpo,
    grpo,
    rloo,
)


def length_reward(prompts, completions, **kwargs):
    return [float(len(c)) for c in completions]


@pytest.fixture(scope="module")
def folders(tmp_path_factory, tokenizer, tiny_config):
    root = tmp_path_factory.mktemp("alt")
    torch.manual_seed(0)
    ids = special_token_ids(tokenizer)
    HfGptForCausalLM(tiny_config(vocab_size=len(tokenizer), max_position_embeddings=96, **ids)).save_pretrained(
        root / "sft")
    HfGptForSequenceClassification(tiny_config(vocab_size=len(tokenizer), max_position_embeddings=96, num_labels=1,
                                               **ids)).save_pretrained(root / "rm")
    for name in ("sft", "rm"):
        tokenizer.save_pretrained(root / name)
    rows = [{"prompt": f"Question {i}?", "chosen": f"Good answer {i}.", "rejected": f"Bad {i}"} for i in range(16)]
    (root / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def common(root: Path, out: str) -> dict:
    return dict(output_dir=str(root / out), model_name_or_path=str(root / "sft"),
                data_files=[str(root / "pairs.jsonl")], max_steps=2, per_device_train_batch_size=4,
                learning_rate=1e-4, save_strategy="no", disable_tqdm=True, logging_steps=1, use_cpu=True)


@pytest.mark.parametrize("make_config, run", [(GRPORecipeConfig, grpo), (RLOORecipeConfig, rloo)])
def test_online_methods_with_reward_model_and_function(folders, make_config, run):
    args = make_config(**common(folders, run.__name__), reward_model_path=str(folders / "rm"),
                       reward_functions=["test_trl_methods:length_reward"], num_generations=2,
                       max_completion_length=8, beta=0.05)
    trainer = run(args)
    logged = [h for h in trainer.state.log_history if "reward" in h]
    assert logged and all(k in logged[0] for k in ("kl", "reward"))
    # Both sources reached TRL: the reward model and the function named by its dotted path.
    parts = [k for k in logged[0] if k.startswith("rewards/") and k.endswith("/mean")]
    assert len(parts) == 2 and any("length_reward" in k for k in parts)
    assert (folders / run.__name__ / "model.safetensors").exists()
    assert all(h["tokens_per_second"] > 0 for h in trainer.state.log_history if "loss" in h)


def test_dpo_on_pairs(folders):
    trainer = dpo(DPORecipeConfig(**common(folders, "dpo"), beta=0.1))
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert losses[0] == pytest.approx(0.6931, abs=1e-3)  # -log σ(0): the policy starts equal to its reference
    assert all(h["tokens_per_second"] > 0 for h in trainer.state.log_history if "loss" in h)


def test_reward_function_import_errors():
    assert load_reward_function("test_trl_methods:length_reward") is length_reward
    with pytest.raises(ValueError, match="Cannot import reward function 'nope.mod:f'"):
        load_reward_function("nope.mod:f")


def test_a_finished_dpo_folder_is_not_overwritten_and_has_a_card(folders):
    from hf_gpt.hub import render_card

    out = folders / "dpo-rerun"
    dpo(DPORecipeConfig(**common(folders, "dpo-rerun"), beta=0.1))
    before = (out / "model.safetensors").read_bytes()
    with pytest.raises(ValueError, match="holds a finished DPO model"):
        dpo(DPORecipeConfig(**common(folders, "dpo-rerun"), beta=0.1))
    assert (out / "model.safetensors").read_bytes() == before
    card = render_card(out, "tester/dpo")
    assert "aligned with TRL's DPO" in card and "dpo" in card


ONLINE = dict(reward_functions=["test_trl_methods:length_reward"], num_generations=2, max_completion_length=8,
              beta=0.05)


@pytest.mark.parametrize("make_config, run, extra", [
    (DPORecipeConfig, dpo, dict(beta=0.1)), (GRPORecipeConfig, grpo, ONLINE), (RLOORecipeConfig, rloo, ONLINE)])
def test_each_method_trains_in_bf16(folders, make_config, run, extra):
    """`--bf16 true` reaches TRL's trainers (on the CPU under autocast): the policy's forward passes run in bfloat16,
    its master weights stay float32, and DPO's first loss is still -log σ(0)."""
    from hf_gpt.modeling_hf_gpt import FeedForward

    args = make_config(**{**common(folders, f"{run.__name__}-bf16"), "max_steps": 1}, bf16=True, **extra)
    seen = []
    hook = torch.nn.modules.module.register_module_forward_hook(
        lambda module, inputs, output: seen.append(output.dtype) if isinstance(module, FeedForward) else None)
    try:
        trainer = run(args)
    finally:
        hook.remove()
    assert trainer.accelerator.mixed_precision == "bf16" and torch.bfloat16 in seen
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert losses and all(torch.isfinite(torch.tensor(losses)))
    if run is dpo:
        assert set(seen) == {torch.bfloat16} and losses[0] == pytest.approx(0.6931, abs=1e-3)


@pytest.mark.parametrize("make_config, run, extra", [
    (DPORecipeConfig, dpo, dict(beta=0.1)), (GRPORecipeConfig, grpo, ONLINE), (RLOORecipeConfig, rloo, ONLINE)])
def test_each_method_resumes_after_a_kill_to_the_same_losses(folders, make_config, run, extra):
    """The folder a kill after checkpoint-2 leaves (checkpoint-4 and the final files gone) is resumed by the same
    call, which repeats the uninterrupted run's losses at steps 3 and 4 (generation RNG restored for GRPO/RLOO)."""
    import shutil

    name = f"{run.__name__}-resume"
    settings = {**common(folders, name), "max_steps": 4, "save_strategy": "steps", "save_steps": 2, **extra}
    whole = run(make_config(**settings))
    losses = lambda trainer: {h["step"]: h["loss"] for h in trainer.state.log_history if "loss" in h}
    shutil.rmtree(folders / name / "checkpoint-4")
    for path in (folders / name).iterdir():
        if path.is_file() and path.name not in ("run.json", ".hf-gpt.lock"):
            path.unlink()
    kept = (folders / name / "checkpoint-2" / "trainer_state.json").stat().st_mtime_ns
    resumed = run(make_config(**settings))
    assert (folders / name / "checkpoint-2" / "trainer_state.json").stat().st_mtime_ns == kept  # not trained again
    assert resumed.state.global_step == 4 and (folders / name / "model.safetensors").is_file()
    assert [losses(resumed)[s] for s in (3, 4)] == pytest.approx([losses(whole)[s] for s in (3, 4)], abs=1e-6)


@pytest.mark.parametrize("flag, value", [("--reward_model_path", "runs/rm"), ("--reward_functions", "m:f"),
                                         ("--drop_long_prompts", "true")])
def test_dpo_refuses_what_only_the_online_methods_read(tmp_path, one_line, flag, value):
    """DPO trains on pairs: a reward model, reward functions or prompt dropping would be accepted and ignored."""
    line = one_line("dpo", ["--output_dir", str(tmp_path / "dpo"), flag, value])
    assert line == f"error: unknown option {flag}: check its spelling (--help lists every option)"
