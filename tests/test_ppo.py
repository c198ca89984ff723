import copy
import json
import math
from pathlib import Path

import pytest
import torch
from datasets import Dataset

from hf_gpt import HfGptForCausalLM, HfGptForSequenceClassification
from hf_gpt.ppo import PPO, PPOConfig, PPOTrainer, encode_prompts, per_token_values
from hf_gpt.ppo_core import (
    AdaptiveKLController,
    clipped_policy_loss,
    clipped_value_loss,
    first_eos_mask,
    gae,
    kl_penalized_rewards,
    kl_per_token,
    logprobs_from_logits,
    masked_mean,
    masked_whiten,
)
from hf_gpt.tokenizer import special_token_ids

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none on this machine)")

# ------------------------------------------------------------------ the math, one function at a time


def test_gae_equals_brute_force():
    torch.manual_seed(0)
    rewards, values = torch.randn(3, 6), torch.randn(3, 6)
    mask = torch.tensor([[1] * 6, [1] * 4 + [0] * 2, [1] * 1 + [0] * 5])
    gamma, lam = 0.9, 0.8
    advantages, returns = gae(rewards, values, mask, gamma, lam)
    for b in range(3):
        n = int(mask[b].sum())
        v = [values[b, t].item() for t in range(n)] + [0.0]  # the episode ends after the last real token
        deltas = [rewards[b, t].item() + gamma * v[t + 1] - v[t] for t in range(n)]
        for t in range(6):
            expected = sum((gamma * lam) ** k * deltas[t + k] for k in range(n - t)) if t < n else 0.0
            assert advantages[b, t].item() == pytest.approx(expected, abs=1e-5)
            assert returns[b, t].item() == pytest.approx(expected + (v[t] if t < n else 0.0), abs=1e-5)


def test_whitening_over_valid_tokens():
    torch.manual_seed(0)
    x = torch.randn(4, 7) * 5 + 3
    mask = torch.ones(4, 7, dtype=torch.long)
    mask[1, 3:] = mask[3, 5:] = 0
    white = masked_whiten(x, mask)
    valid = white[mask.bool()]
    assert valid.mean().item() == pytest.approx(0.0, abs=1e-5)
    assert valid.std().item() == pytest.approx(1.0, abs=1e-3)
    assert torch.all(white[~mask.bool()] == 0)
    kept = masked_whiten(x, mask, shift_mean=False)[mask.bool()]
    assert kept.mean().item() == pytest.approx(x[mask.bool()].mean().item(), abs=1e-4)  # the flag does what it says


def trl_112_masked_whiten(values, mask, shift_mean=True):
    """TRL 1.12's trl.trainer.utils.masked_whiten (with its masked_mean/masked_var), the formula PPO's
    `whiten_rewards` follows: `masked_whiten(rewards, mask, shift_mean=False)`, padding filled with 0 after."""
    mean = (values * mask).sum() / mask.sum()
    var = (((values - mean) ** 2) * mask).sum() / mask.sum() * (mask.sum() / (mask.sum() - 1))
    whitened = (values - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        whitened += mean
    return whitened


@pytest.mark.parametrize("shift_mean", [True, False])
def test_whitening_equals_trl_112(shift_mean):
    torch.manual_seed(1)
    x = torch.randn(3, 6) * 2 - 4  # a negative mean: removing it would flip the rewards' sign
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1], [1, 1, 0, 0, 0, 0]])
    expected = trl_112_masked_whiten(x, mask, shift_mean).masked_fill(mask == 0, 0)
    torch.testing.assert_close(masked_whiten(x, mask, shift_mean=shift_mean), expected)


def test_score_lands_at_the_last_response_token():
    responses = torch.tensor([[5, 6, 1, 2, 2], [5, 6, 7, 8, 9], [1, 2, 2, 2, 2]])  # eos=1, pad=2
    mask, last, has_eos = first_eos_mask(responses, eos_token_id=1)
    assert mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]
    assert last.tolist() == [2, 4, 0] and has_eos.tolist() == [True, False, True]
    kl = torch.full((3, 5), 0.5)
    rewards, non_score = kl_penalized_rewards(torch.tensor([10.0, 20.0, 30.0]), kl, mask, last, kl_coef=0.1)
    expected = -0.05 * mask.float()
    expected[0, 2] += 10.0
    expected[1, 4] += 20.0
    expected[2, 0] += 30.0
    torch.testing.assert_close(rewards, expected)
    torch.testing.assert_close(non_score, -0.05 * mask.float())


def test_kl_estimators():
    lp, ref = torch.tensor([[-1.0, -2.0]]), torch.tensor([[-1.5, -1.0]])
    torch.testing.assert_close(kl_per_token(lp, ref, "k1"), torch.tensor([[0.5, -1.0]]))
    r = torch.exp(ref - lp)
    torch.testing.assert_close(kl_per_token(lp, ref, "k3"), (r - 1) - torch.log(r))
    assert (kl_per_token(lp, ref, "k3") >= 0).all()
    with pytest.raises(ValueError, match="k1' or 'k3"):
        kl_per_token(lp, ref, "k2")


def test_clipped_losses_by_hand():
    old = torch.log(torch.tensor([[0.5, 0.5, 0.5]]))
    new = torch.log(torch.tensor([[0.8, 0.3, 0.55]]))  # ratios 1.6, 0.6, 1.1
    adv = torch.tensor([[1.0, -1.0, 2.0]])
    mask = torch.ones(1, 3)
    loss, stats = clipped_policy_loss(new, old, adv, mask, cliprange=0.2)
    # ratio 1.6, A=1: max(-1.6, -1.2) = -1.2 (clipped); ratio 0.6, A=-1: max(0.6, 0.8) = 0.8 (clipped); 1.1: -2.2
    assert loss.item() == pytest.approx((-1.2 + 0.8 - 2.2) / 3, abs=1e-6)
    assert stats["clipfrac"].item() == pytest.approx(2 / 3)
    assert stats["ratio"].item() == pytest.approx((1.6 + 0.6 + 1.1) / 3, abs=1e-6)
    values, old_values, returns = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.5, 0.5]]), torch.tensor([[2.0, 0.4]])
    vf, vf_clip = clipped_value_loss(values, old_values, returns, torch.ones(1, 2), cliprange_value=0.2)
    # first: unclipped (1-2)^2=1, clipped (0.7-2)^2=1.69 → 1.69; second: (0-0.4)^2=.16, (0.3-0.4)^2=.01 → .16
    assert vf.item() == pytest.approx(0.5 * (1.69 + 0.16) / 2, abs=1e-6)
    assert vf_clip.item() == pytest.approx(0.5)


def test_adaptive_kl_controller():
    ctl = AdaptiveKLController(0.1, target=6.0, horizon=100)
    ctl.update(current_kl=12.0, n_steps=10)  # error clipped to +0.2
    assert ctl.value == pytest.approx(0.1 * 1.02)
    ctl.update(current_kl=3.0, n_steps=10)  # error -0.5 → clipped to -0.2
    assert ctl.value == pytest.approx(0.1 * 1.02 * 0.98)


# ------------------------------------------------------------------ with models


@pytest.fixture()
def make_models(tiny_config):
    def make_models(tokenizer, tmp_path: Path | None = None):
        torch.manual_seed(0)
        config = tiny_config(vocab_size=len(tokenizer), max_position_embeddings=96, **special_token_ids(tokenizer))
        policy = HfGptForCausalLM(config)
        ref = HfGptForCausalLM(config)
        ref.load_state_dict(policy.state_dict())
        value = HfGptForSequenceClassification(tiny_config(vocab_size=len(tokenizer), max_position_embeddings=96,
                                                           num_labels=1, **special_token_ids(tokenizer)))
        return policy, ref, value

    return make_models


def test_generation_logprobs_equal_forward_logprobs_with_left_padding(tokenizer, make_models):
    policy, _, _ = make_models(tokenizer)
    policy.eval()
    prompts = [[{"role": "user", "content": "Hi"}], [{"role": "user", "content": "A much longer question here?"}]]
    batch = encode_prompts(tokenizer, prompts, "cpu")
    assert (batch["attention_mask"][0] == 0).any()  # really left-padded
    torch.manual_seed(0)
    out = policy.generate(**batch, max_new_tokens=8, min_new_tokens=8, do_sample=True, temperature=0.7, top_k=0,
                          top_p=1.0, output_logits=True, return_dict_in_generate=True, eos_token_id=None,
                          pad_token_id=tokenizer.pad_token_id)
    context = batch["input_ids"].shape[1]
    responses = out.sequences[:, context:]
    generation_logprobs = logprobs_from_logits(torch.stack(out.logits, 1), responses, 0.7)
    mask = torch.cat([batch["attention_mask"], torch.ones_like(responses)], 1)
    with torch.no_grad():
        logits = policy(out.sequences, attention_mask=mask).logits
    torch.testing.assert_close(logprobs_from_logits(logits[:, context - 1:-1], responses, 0.7), generation_logprobs,
                               atol=1e-4, rtol=1e-4)


def test_per_token_values_end_with_the_pooled_score(tokenizer, make_models):
    _, _, value = make_models(tokenizer)
    ids = torch.tensor([[5, 6, 7, tokenizer.eos_token_id]])
    with torch.no_grad():
        per_token = per_token_values(value, ids, torch.ones_like(ids))
        torch.testing.assert_close(per_token[:, -1], value(ids).logits[:, 0])


def ppo_args(tmp_path, **kw) -> PPOConfig:
    defaults = dict(output_dir=str(tmp_path / "ppo"), per_device_train_batch_size=8, response_length=8,
                    max_steps=1, learning_rate=1e-3, num_ppo_epochs=1, save_steps=0, sample_every=0, seed=0,
                    report_to="none")
    defaults.update(kw)
    return PPOConfig(**defaults)


def prompts_dataset(n: int = 16) -> Dataset:
    return Dataset.from_list([{"prompt": f"Say something about number {i}."} for i in range(n)])


def test_first_step_ratio_is_one_and_kl_zero(tokenizer, tmp_path, make_models):
    policy, ref, value = make_models(tokenizer)
    trainer = PPOTrainer(ppo_args(tmp_path), policy, ref, value, tokenizer, prompts_dataset(),
                         reward_funcs=[lambda prompts, completions: [0.0] * len(completions)])
    prompts = next(trainer._prompt_batches())
    batch = trainer.rollout(prompts)
    kl = kl_per_token(batch["logprobs"], batch["ref_logprobs"])
    assert torch.all(kl * batch["mask"] == 0)  # policy == reference
    metrics = trainer.ppo_step(prompts)  # one epoch, one minibatch: the first micro-step sees ratio ≡ 1
    assert metrics["val/ratio"] == pytest.approx(1.0, abs=1e-6)
    assert metrics["objective/kl"] == pytest.approx(0.0, abs=1e-6)
    assert metrics["policy/clipfrac_avg"] == 0.0


def test_missing_eos_penalty_only_without_eos(tokenizer, tmp_path, make_models):
    policy, ref, value = make_models(tokenizer)
    trainer = PPOTrainer(ppo_args(tmp_path, missing_eos_penalty=5.0), policy, ref, value, tokenizer,
                         prompts_dataset(), reward_funcs=[lambda p, c: [1.0] * len(c)])
    metrics = trainer.ppo_step(next(trainer._prompt_batches()))
    n_eos = metrics["val/num_eos_tokens"]
    assert metrics["objective/scores"] == pytest.approx((n_eos * 1.0 + (8 - n_eos) * (1.0 - 5.0)) / 8)


@pytest.mark.parametrize("func, message", [
    (lambda p, c: [0.0], "returned 1 scores for 8 completions"),
    (lambda p, c: [float("nan")] * len(c), "NaN"),
])
def test_bad_reward_function_is_a_clear_error(tokenizer, tmp_path, func, message, make_models):
    policy, ref, value = make_models(tokenizer)
    trainer = PPOTrainer(ppo_args(tmp_path), policy, ref, value, tokenizer, prompts_dataset(), reward_funcs=[func])
    with pytest.raises(ValueError, match=message):
        trainer.ppo_step(next(trainer._prompt_batches()))


def test_no_reward_is_a_clear_error(tokenizer, tmp_path, make_models):
    policy, ref, value = make_models(tokenizer)
    with pytest.raises(ValueError, match="PPO needs a reward"):
        PPOTrainer(ppo_args(tmp_path), policy, ref, value, tokenizer, prompts_dataset())


def contains_letter_a(prompts, completions):
    """A verifiable reward: the share of characters that are the letter 'a' (a policy can learn to say 'aaaa')."""
    return [c.count("a") / max(len(c), 1) for c in completions]


@pytest.mark.slow
def test_ppo_raises_a_verifiable_reward_with_bounded_kl(tokenizer, tmp_path, make_models):
    policy, ref, value = make_models(tokenizer)
    # 60 steps: over seeds 0-11 the score gain was 0.29-0.46 and max KL 12-18 (40 steps: as little as +0.17).
    args = ppo_args(tmp_path, max_steps=60, num_ppo_epochs=2, learning_rate=1e-2, kl_coef=0.02, response_length=6,
                    temperature=1.0, missing_eos_penalty=None, save_steps=0)
    trainer = PPOTrainer(args, policy, ref, value, tokenizer, prompts_dataset(64), reward_funcs=[contains_letter_a])
    history = trainer.train()
    PPO(args).finish(trainer)
    first = sum(h["objective/scores"] for h in history[:5]) / 5
    last = sum(h["objective/scores"] for h in history[-5:]) / 5
    assert last > first + 0.2, [round(h["objective/scores"], 3) for h in history]
    assert max(h["objective/kl"] for h in history) < 25.0
    assert all(h["perf/tokens_per_second"] > 0 for h in history)  # logging_steps=1
    out = Path(args.output_dir)
    assert json.loads((out / "training_summary.json").read_text())["throughput"]["tokens_per_second"] > 0
    assert (out / "model.safetensors").exists() and (out / "value_model" / "model.safetensors").exists()
    assert (out / "ppo_curves.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_checkpoint_and_resume(tokenizer, tmp_path, make_models):
    def run(max_steps, resume):
        policy, ref, value = make_models(tokenizer)
        args = ppo_args(tmp_path, max_steps=max_steps, save_steps=2, response_length=4, output_dir=str(tmp_path / "r"))
        trainer = PPOTrainer(args, policy, ref, value, tokenizer, prompts_dataset(32), reward_funcs=[contains_letter_a])
        return trainer.train(resume_from_checkpoint=resume)

    full = run(4, None)
    # a second run restarted from checkpoint-2 must replay steps 3 and 4 exactly
    assert not (tmp_path / "r" / "checkpoint-4").exists()  # the last step saves the model, not a checkpoint
    resumed = run(4, str(tmp_path / "r" / "checkpoint-2"))
    assert [h["step"] for h in resumed] == [1, 2, 3, 4]
    for a, b in zip(full[2:], resumed[2:]):
        assert a["objective/scores"] == pytest.approx(b["objective/scores"], abs=1e-6)
        assert a["loss/policy_avg"] == pytest.approx(b["loss/policy_avg"], abs=1e-5)
    assert json.loads((tmp_path / "r" / "checkpoint-2" / "ppo_state.json").read_text())["step"] == 2
    assert math.isfinite(resumed[-1]["loss/value_avg"])


def test_masked_mean_ignores_masked():
    assert masked_mean(torch.tensor([[1.0, 100.0]]), torch.tensor([[1, 0]])).item() == 1.0


def test_hh_rlhf_prompts_run_a_ppo_step(tokenizer, tmp_path, shared_data, make_models):
    path = shared_data("pref_hh_rlhf_harmless_test/harmless_base_test.jsonl")
    from types import SimpleNamespace

    from hf_gpt.data import load_rows

    rows = load_rows(SimpleNamespace(data_files=[str(path)], dataset_name=None, max_rows=200))
    short = rows.filter(lambda r: len(r["prompt"]) < 120).select(range(8))
    policy, ref, value = make_models(tokenizer)
    trainer = PPOTrainer(ppo_args(tmp_path, response_length=6), policy, ref, value, tokenizer, short,
                         reward_model=value)
    metrics = trainer.ppo_step(next(trainer._prompt_batches()))
    assert math.isfinite(metrics["objective/scores"]) and math.isfinite(metrics["loss/value_avg"])


def test_lora_policy_uses_itself_without_adapters_as_reference(tokenizer, tmp_path, make_models):
    from peft import LoraConfig, get_peft_model

    policy, _, value = make_models(tokenizer)
    base_state = {k: v.clone() for k, v in policy.state_dict().items()}
    peft_policy = get_peft_model(policy, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", lora_dropout=0.0))
    args = ppo_args(tmp_path, max_steps=3, learning_rate=1e-2, response_length=6)
    trainer = PPOTrainer(args, peft_policy, None, value, tokenizer, prompts_dataset(32),
                         reward_funcs=[contains_letter_a])
    prompts = next(trainer._prompt_batches())
    batch = trainer.rollout(prompts)
    assert torch.all(kl_per_token(batch["logprobs"], batch["ref_logprobs"]) * batch["mask"] == 0)  # B = 0 at start
    history = trainer.train()
    assert history[-1]["objective/kl"] != 0.0  # the adapters moved the policy away from its reference
    base_now = peft_policy.get_base_model().state_dict()
    for name, value_ in base_state.items():  # the frozen base (= the reference) did not change
        key = name if name in base_now else name.replace(".weight", ".base_layer.weight").replace(".bias",
                                                                                                   ".base_layer.bias")
        torch.testing.assert_close(base_now[key].cpu(), value_)  # trained on the GPU where there is one
    trainer.save_model()
    assert (Path(args.output_dir) / "adapter_model.safetensors").exists()
    with pytest.raises(ValueError, match="Give ref_policy"):
        PPOTrainer(args, make_models(tokenizer)[0], None, value, tokenizer, prompts_dataset(), reward_funcs=[len])


def test_prompt_longer_than_context_is_an_error_or_a_counted_drop(tokenizer, tmp_path, caplog):
    from hf_gpt.chat import prompts_that_fit

    prompts = ["short", "long " * 200]
    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.model_max_length = 96  # transformers would warn about the long one; it is counted instead
    with pytest.raises(ValueError, match="Prompt row 1 has .* tokens; with 8 new tokens that exceeds"):
        prompts_that_fit(prompts, tokenizer, context=96, room=8)
    assert prompts_that_fit(prompts, tokenizer, context=96, room=8, drop=True) == [0]
    assert "Token indices sequence length" not in caplog.text


# ------------------------------------------------------------------ every PPOConfig field is used or refused


def test_learning_rate_follows_the_schedule_with_warmup(tokenizer, tmp_path, make_models):
    from transformers import get_scheduler

    policy, ref, value = make_models(tokenizer)
    args = ppo_args(tmp_path, max_steps=6, lr_scheduler_type="cosine", warmup_steps=2, learning_rate=1e-3)
    history = PPOTrainer(args, policy, ref, value, tokenizer, prompts_dataset(48),
                         reward_funcs=[contains_letter_a]).train()
    sgd = torch.optim.SGD([torch.zeros(1)], lr=1e-3)
    reference = get_scheduler("cosine", sgd, num_warmup_steps=2, num_training_steps=6)
    expected = []
    for _ in range(6):
        expected.append(reference.get_last_lr()[0])
        sgd.step()
        reference.step()
    assert [h["lr"] for h in history] == pytest.approx(expected)
    assert expected[0] == 0.0 and expected[2] == pytest.approx(1e-3)  # warm-up, then the peak


def test_optimizer_fields_reach_the_optimizer(tokenizer, tmp_path, make_models):
    policy, ref, value = make_models(tokenizer)
    args = ppo_args(tmp_path, optim="adamw_torch", adam_beta1=0.8, adam_epsilon=1e-6, weight_decay=0.01)
    trainer = PPOTrainer(args, policy, ref, value, tokenizer, prompts_dataset(), reward_funcs=[contains_letter_a])
    group = trainer.optimizer.param_groups[0]
    assert group["betas"][0] == 0.8 and group["eps"] == 1e-6 and group["weight_decay"] == 0.01


@pytest.mark.parametrize("device, precision", [
    ("cpu", "bf16"),
    pytest.param("cuda", "bf16", marks=cuda),
    pytest.param("cuda", "fp16", marks=cuda),  # T4-class cards: loss scaling through the Accelerator
])
def test_mixed_precision_runs_under_autocast(device, precision, tokenizer, tmp_path, make_models):
    policy, ref, value = make_models(tokenizer)
    on_cpu = dict(use_cpu=True, peak_tflops=0.001) if device == "cpu" else {}  # a GPU's peak comes from the table
    trainer = PPOTrainer(ppo_args(tmp_path, max_steps=2, **{precision: True}, **on_cpu), policy, ref, value, tokenizer,
                         prompts_dataset(), reward_funcs=[contains_letter_a])
    assert trainer.accelerator.mixed_precision == precision and trainer.accelerator.device.type == device
    seen = []
    hook = policy.lm_head.register_forward_hook(lambda module, inputs, output: seen.append(output.dtype))
    history = trainer.train()
    hook.remove()
    assert {"bf16": torch.bfloat16, "fp16": torch.float16}[precision] in seen  # the forward passes ran in it
    assert policy.lm_head.weight.dtype == torch.float32  # master weights stay fp32
    assert all(math.isfinite(h["loss/policy_avg"]) and math.isfinite(h["objective/kl"]) for h in history)
    assert all(h["perf/mfu"] > 0 for h in history)  # MFU against the given peak (CPU) or the GPU's from the table


def test_activation_checkpointing_is_switched_on(tokenizer, tmp_path, make_models):
    policy, ref, value = make_models(tokenizer)
    PPOTrainer(ppo_args(tmp_path, gradient_checkpointing=True), policy, ref, value, tokenizer, prompts_dataset(),
               reward_funcs=[contains_letter_a])
    assert policy.is_activation_checkpointing and value.is_activation_checkpointing


def test_tensorboard_events_and_save_total_limit(tokenizer, tmp_path, make_models):
    policy, ref, value = make_models(tokenizer)
    args = ppo_args(tmp_path, max_steps=5, save_steps=1, save_total_limit=2, report_to="tensorboard",
                    response_length=4)
    PPOTrainer(args, policy, ref, value, tokenizer, prompts_dataset(48), reward_funcs=[contains_letter_a]).train()
    out = Path(args.output_dir)
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-4"]
    events = list(out.rglob("events.out.tfevents.*"))
    assert events, "no TensorBoard event file"
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = EventAccumulator(str(events[0].parent)).Reload().Tags()["scalars"]
    assert {"objective/scores", "objective/kl", "lr"} <= set(tags)


def test_save_strategy_no_writes_no_checkpoint(tokenizer, tmp_path, make_models):
    policy, ref, value = make_models(tokenizer)
    args = ppo_args(tmp_path, max_steps=2, save_steps=1, save_strategy="no", response_length=4)
    PPOTrainer(args, policy, ref, value, tokenizer, prompts_dataset(), reward_funcs=[contains_letter_a]).train()
    assert not list(Path(args.output_dir).glob("checkpoint-*"))


def test_fractional_save_and_logging_steps_are_shares_of_max_steps(tokenizer, tmp_path, make_models):
    policy, ref, value = make_models(tokenizer)
    args = ppo_args(tmp_path, max_steps=5, save_steps=0.4, logging_steps=0.2, response_length=4)
    PPOTrainer(args, policy, ref, value, tokenizer, prompts_dataset(48), reward_funcs=[contains_letter_a]).train()
    assert (args.save_steps, args.logging_steps) == (2, 1)  # ceil(5 × 0.4), ceil(5 × 0.2), as Trainer reads them
    assert sorted(p.name for p in Path(args.output_dir).glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]


def test_lora_dropout_is_refused_because_ppo_turns_dropout_off(tmp_path):
    with pytest.raises(ValueError, match="lora_dropout must be 0"):
        ppo_args(tmp_path, use_peft=True, lora_dropout=0.1)


@pytest.mark.parametrize("field, value", [("eval_strategy", "steps"), ("torch_compile", True),
                                          ("num_train_epochs", 2.0), ("label_smoothing_factor", 0.1),
                                          ("save_strategy", "epoch")])
def test_fields_ppo_does_not_use_are_refused_when_parsed(tmp_path, field, value):
    with pytest.raises(ValueError, match=field):
        ppo_args(tmp_path, **{field: value})


def test_recipe_refuses_an_unused_field_in_one_line(tmp_path):
    from hf_gpt.recipe_utils import run_recipe

    with pytest.raises(SystemExit) as stop:  # recipes/ppo.py is `run_recipe("ppo")`
        run_recipe("ppo", ["--output_dir", str(tmp_path), "--eval_steps", "5"])
    assert stop.value.code == "error: PPO does not use eval_steps (set to 5.0): remove it from the config or flags."


def test_ppo_says_what_is_coming_and_logs_readable_lines(tokenizer, tmp_path, make_models, capsys):
    policy, ref, value = make_models(tokenizer)
    args = ppo_args(tmp_path, max_steps=2, response_length=4, num_ppo_epochs=1, logging_steps=1)
    PPOTrainer(args, policy, ref, value, tokenizer, prompts_dataset(), reward_funcs=[contains_letter_a]).train()
    out = capsys.readouterr().out
    rollouts = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.num_mini_batches
    assert f"[PPO] 2 steps to go, each {rollouts} rollouts of up to 4 tokens and 1 update epochs" in out
    lines = [line for line in out.splitlines() if line.startswith("[PPO] step ")]
    assert [line.split(" · ")[0] for line in lines] == ["[PPO] step 1/2", "[PPO] step 2/2"]
    assert all(" · score " in line and ", KL " in line for line in lines)
    assert not [line for line in out.splitlines() if line.startswith("{")]  # no raw dicts
