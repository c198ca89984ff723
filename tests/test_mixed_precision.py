"""`--bf16` through the Trainer-based stages, run on the CPU under autocast (PPO's is in test_ppo.py, DPO/GRPO/RLOO's
in test_trl_methods.py): the forward passes run in bfloat16, master weights stay float32, and the loss matches
float32 to bf16's precision. And `--torch_compile` for pretraining and SFT."""

import pytest
import torch
from transformers import TrainerCallback

from hf_gpt.data import write_jsonl
from hf_gpt.pretrain import PretrainConfig, pretrain
from hf_gpt.reward import RewardRecipeConfig, train_reward_model
from hf_gpt.sft import SFTRecipeConfig, SupervisedFineTuning

# bf16 keeps 8 bits of mantissa (~3 significant digits): a first-step loss of ~6.4 nats moves by a few hundredths.
LOSS_TOLERANCE = 0.01  # relative


class LogitDtypes(TrainerCallback):
    """Records the dtype of the last block's feed-forward output in every training forward (TRL's SFT may compute
    its loss without calling lm_head)."""

    def __init__(self):
        self.seen: list[torch.dtype] = []

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        record = lambda module, inputs, output: self.seen.append(output.dtype)
        model.model.layers[-1].feed_forward.register_forward_hook(record)


def first_loss(history: list[dict]) -> float:
    return next(h["loss"] for h in history if "loss" in h)


def test_pretraining_in_bf16(tmp_path, tokenizer):
    from pydoc_data.topics import topics

    tokenizer.save_pretrained(tmp_path / "tok")
    data = write_jsonl(tmp_path / "d.jsonl", [{"text": t} for t in list(topics.values())[:20]])
    runs = {}
    for bf16 in (False, True):
        dtypes = LogitDtypes()
        args = PretrainConfig(output_dir=str(tmp_path / f"bf16-{bf16}"), data_files=[str(data)], bf16=bf16,
                              tokenizer_name_or_path=str(tmp_path / "tok"), block_size=32, n_layer=2, n_head=2,
                              n_embd=32, per_device_train_batch_size=4, max_steps=2, logging_steps=1,
                              eval_strategy="no", save_strategy="no", report_to="none", disable_tqdm=True,
                              use_cpu=True)
        trainer = pretrain(args, callbacks=[dtypes])
        runs[bf16] = first_loss(trainer.state.log_history)
        assert set(dtypes.seen) == {torch.bfloat16 if bf16 else torch.float32}
        assert trainer.model.lm_head.weight.dtype == torch.float32  # master weights
    assert runs[True] == pytest.approx(runs[False], rel=LOSS_TOLERANCE)


def test_sft_and_reward_in_bf16(tmp_path, tokenizer, model_folder):
    base = model_folder(tmp_path, tokenizer)
    rows = [{"prompt": f"Is {n} even?", "completion": "yes" if n % 2 == 0 else "no"} for n in range(40)]
    sft_data = write_jsonl(tmp_path / "sft.jsonl", rows)
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": r["prompt"], "chosen": r["completion"],
                                                    "rejected": "no" if r["completion"] == "yes" else "yes"}
                                                   for r in rows])
    common = dict(model_name_or_path=str(base), per_device_train_batch_size=8, max_steps=2, logging_steps=1,
                  eval_strategy="no", save_strategy="no", validation_fraction=0.0, report_to="none",
                  disable_tqdm=True, use_cpu=True)
    sft_loss, rm_loss = {}, {}
    for bf16 in (False, True):
        args = SFTRecipeConfig(output_dir=str(tmp_path / f"sft-{bf16}"), data_files=[str(sft_data)], bf16=bf16,
                               dataset_num_proc=None, **common)
        trainer = SupervisedFineTuning(args).build(None)
        dtypes = LogitDtypes()
        trainer.add_callback(dtypes)
        trainer.train()
        sft_loss[bf16] = first_loss(trainer.state.log_history)
        assert set(dtypes.seen) == {torch.bfloat16 if bf16 else torch.float32}
        reward = train_reward_model(RewardRecipeConfig(output_dir=str(tmp_path / f"rm-{bf16}"),
                                                       data_files=[str(pairs)], bf16=bf16, **common))
        rm_loss[bf16] = first_loss(reward.state.log_history)
    assert sft_loss[True] == pytest.approx(sft_loss[False], rel=LOSS_TOLERANCE)
    assert rm_loss[True] == pytest.approx(rm_loss[False], rel=LOSS_TOLERANCE)


def test_torch_compile_for_pretraining_and_sft(tmp_path, tokenizer, model_folder):
    """`--torch_compile true`: the Trainer runs the compiled model, pretraining's model traces into one graph with no
    break, and both stages' losses equal the uncompiled run's. Dynamo's "eager" backend keeps this quick on the CPU;
    inductor's code generation runs on a GPU in bench/gpu_check.sh."""
    from pydoc_data.topics import topics

    from torch._dynamo.utils import counters

    tokenizer.save_pretrained(tmp_path / "tok")
    text = write_jsonl(tmp_path / "d.jsonl", [{"text": t} for t in list(topics.values())[:20]])
    rows = [{"prompt": f"Is {n} even?" + " Think." * (n % 4), "completion": "yes" if n % 2 == 0 else "no"}
            for n in range(32)]
    sft_data = write_jsonl(tmp_path / "sft.jsonl", rows)
    base = model_folder(tmp_path, tokenizer)
    common = dict(max_steps=3, logging_steps=1, eval_strategy="no", save_strategy="no", report_to="none",
                  disable_tqdm=True, use_cpu=True, seed=0, per_device_train_batch_size=4)
    losses = {}
    for compiled in (False, True):
        compile_args = dict(torch_compile=True, torch_compile_backend="eager") if compiled else {}
        counters.clear()
        trainer = pretrain(PretrainConfig(output_dir=str(tmp_path / f"pre-{compiled}"), data_files=[str(text)],
                                          tokenizer_name_or_path=str(tmp_path / "tok"), block_size=32, n_layer=2,
                                          n_head=2, n_embd=32, **common, **compile_args))
        if compiled:
            assert isinstance(trainer.model_wrapped, torch._dynamo.eval_frame.OptimizedModule)
            assert counters["stats"]["unique_graphs"] >= 1 and not counters["graph_break"]
        sft_trainer = SupervisedFineTuning(SFTRecipeConfig(
            output_dir=str(tmp_path / f"sft-{compiled}"), data_files=[str(sft_data)], model_name_or_path=str(base),
            validation_fraction=0.0, dataset_num_proc=None, **common, **compile_args)).build(None)
        sft_trainer.train()  # TRL's own loss kernel breaks the graph twice (an `out=` matmul): TRL's, not the model's
        assert isinstance(sft_trainer.model_wrapped, torch._dynamo.eval_frame.OptimizedModule) == compiled
        losses[compiled] = [[h["loss"] for h in t.state.log_history if "loss" in h] for t in (trainer, sft_trainer)]
    assert losses[True] == [pytest.approx(x, rel=1e-5) for x in losses[False]]
