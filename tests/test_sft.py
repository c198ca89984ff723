import copy
import json
import math
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM

from hf_gpt import HfGptForCausalLM
from hf_gpt.generation import complete
from hf_gpt.sft import (
    SFTRecipeConfig,
    SupervisedFineTuning,
    prepare_sft_dataset,
    replay_blocks,
    sft,
    to_conversation,
)

MULTI_TURN = {"messages": [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "4"},
    {"role": "user", "content": "And 3+3?"},
    {"role": "assistant", "content": "6"},
]}


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def config(tmp_path, data: Path, model: Path, **kw) -> SFTRecipeConfig:
    defaults = dict(output_dir=str(tmp_path / "out"), model_name_or_path=str(model), data_files=[str(data)],
                    per_device_train_batch_size=4, max_steps=2, eval_strategy="no", save_strategy="no",
                    validation_fraction=0.0, report_to="none", disable_tqdm=True, dataset_num_proc=None)
    defaults.update(kw)
    return SFTRecipeConfig(**defaults)


def test_layouts_become_conversations():
    alpaca = to_conversation({"instruction": "Add", "input": "2 and 2", "output": "4"}, system_prompt="Sys")
    assert alpaca == {"prompt": [{"role": "system", "content": "Sys"}, {"role": "user", "content": "Add\n\n2 and 2"}],
                      "completion": [{"role": "assistant", "content": "4"}]}
    dolly = to_conversation({"instruction": "Who?", "context": "Bob ran.", "response": "Bob"})
    assert dolly["prompt"][0]["content"] == "Who?\n\nContext:\nBob ran."
    plain = to_conversation({"prompt": "Hi", "completion": "Hello"})
    assert plain["completion"][0]["content"] == "Hello"
    assert to_conversation(MULTI_TURN) == MULTI_TURN


@pytest.mark.parametrize("row, message", [
    ({"prompt": "Hi", "completion": ""}, "field 'completion' is empty"),
    ({"prompt": "Hi", "completion": 3}, "field 'completion' is empty or not a string"),
    ({"instruction": "", "output": "x"}, "field 'instruction' is empty"),
    ({"messages": [{"role": "user", "content": "Hi"}]}, "no assistant turn"),
    ({"messages": [{"role": "bot", "content": "Hi"}]}, "role 'bot'"),
    ({"messages": ["Hi", {"role": "assistant", "content": "Hello"}]}, r"messages'\[0\] has role None"),  # not a dict
])
def test_bad_rows_name_the_field(row, message):
    with pytest.raises(ValueError, match=message):
        to_conversation(row)


def test_bad_rows_are_counted_and_skipped(tokenizer):
    rows = [{"prompt": "Hi", "completion": "Hello"}, {"prompt": "Hi", "completion": ""},
            {"prompt": "x " * 80, "completion": "too late"}, {"prompt": "Hey", "completion": "y " * 40}]
    dataset, report = prepare_sft_dataset(Dataset.from_list(rows), tokenizer, max_length=40)
    assert report["kept"] == 2 and report["skipped: bad row"] == 1
    assert report["dropped: prompt fills the context"] == 1 and report["truncated (response cut at max_length)"] == 1
    with pytest.raises(ValueError, match="columns \\['question'\\]; expected one of the layouts"):
        prepare_sft_dataset(Dataset.from_list([{"question": "q"}]), tokenizer, max_length=40)


def test_a_conversation_longer_than_max_length_loses_its_oldest_turns_not_its_last_reply(tokenizer, caplog):
    exchange = lambda i: [{"role": "user", "content": f"Question number {i} is here?"},
                          {"role": "assistant", "content": f"Answer number {i} is this one."}]
    system = [{"role": "system", "content": "Be brief."}]
    long = system + exchange(1) + exchange(2) + exchange(3) + exchange(4)
    last = system + exchange(4)
    length = lambda messages: len(tokenizer.apply_chat_template(messages, return_dict=True)["input_ids"])
    max_length = length(system + exchange(3) + exchange(4))  # room for the last two exchanges, not three
    assert length(long) > max_length
    rows = [{"messages": long}, {"messages": last}, {"messages": exchange(5)[:1] + [{"role": "assistant",
                                                                                       "content": "y " * 80}]}]
    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.model_max_length = max_length  # as the demo's: transformers warns about any longer encoding
    dataset, report = prepare_sft_dataset(Dataset.from_list(rows), tokenizer, max_length=max_length)
    assert dataset[0]["messages"] == system + exchange(3) + exchange(4)  # the system prompt stays, the reply whole
    assert dataset[1]["messages"] == last  # one that fits is left alone
    assert report["shortened (oldest turns dropped to fit max_length)"] == 1
    assert report["truncated (response cut at max_length)"] == 1 and report["kept"] == 3  # one reply alone too long
    assert "Token indices sequence length" not in caplog.text  # long rows are counted, not warned about


def test_prompt_completion_labels_mask_the_prompt(saved_model, tokenizer, tmp_path):
    rows = [{"prompt": f"Question {i}?", "completion": f"Answer {i}." * (i % 3 + 1)} for i in range(8)]
    args = config(tmp_path, write_jsonl(tmp_path / "d.jsonl", rows), saved_model, system_prompt="Sys")
    trainer = SupervisedFineTuning(args).build(None)
    batch = next(iter(trainer.get_train_dataloader()))
    for ids, labels, mask in zip(batch["input_ids"], batch["labels"], batch["attention_mask"]):
        real = ids[mask.bool()].tolist()
        text = tokenizer.decode(real)
        prompt_end = text.index("<|assistant|>\n") + len("<|assistant|>\n")
        n_prompt = len(tokenizer(text[:prompt_end]).input_ids)
        assert (labels[:n_prompt] == -100).all()  # system, user and the assistant marker carry no loss
        assert labels[n_prompt: len(real)].tolist() == real[n_prompt:]  # the reply and its eos do
        assert real[-1] == tokenizer.eos_token_id
        assert (labels[len(real):] == -100).all()  # padding carries no loss


def test_multi_turn_labels_only_assistant_turns(saved_model, tokenizer, tmp_path):
    args = config(tmp_path, write_jsonl(tmp_path / "d.jsonl", [MULTI_TURN] * 4), saved_model)
    trainer = SupervisedFineTuning(args).build(None)
    assert args.assistant_only_loss
    batch = next(iter(trainer.get_train_dataloader()))
    kept = [t for t in batch["labels"][0].tolist() if t != -100]
    eos = tokenizer.eos_token_id
    assert kept == tokenizer("4").input_ids + [eos] + tokenizer("6").input_ids + [eos]


@pytest.mark.parametrize("rows, flag", [
    ([{"prompt": "Question?", "completion": "Answer."}] * 4, "completion_only_loss"),
    ([MULTI_TURN] * 4, "assistant_only_loss"),
])
def test_a_users_loss_mask_setting_is_kept(saved_model, tokenizer, tmp_path, rows, flag):
    """Set to False, the whole conversation carries loss: the prompt's tokens are labels too."""
    args = config(tmp_path, write_jsonl(tmp_path / "d.jsonl", rows), saved_model, **{flag: False})
    trainer = SupervisedFineTuning(args).build(None)
    batch = next(iter(trainer.get_train_dataloader()))
    labels, mask = batch["labels"][0], batch["attention_mask"][0].bool()
    assert getattr(args, flag) is False
    assert labels[mask].tolist() == batch["input_ids"][0][mask].tolist()


def test_loss_is_cross_entropy_over_response_tokens(saved_model, tmp_path):
    rows = [{"prompt": f"Say {i}", "completion": f"{i} {i} {i}"} for i in range(4)]
    args = config(tmp_path, write_jsonl(tmp_path / "d.jsonl", rows), saved_model)
    trainer = SupervisedFineTuning(args).build(None)
    batch = next(iter(trainer.get_train_dataloader()))
    model = trainer.model.eval()
    with torch.no_grad():
        loss = trainer.compute_loss(model, dict(batch))
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    targets = batch["labels"][:, 1:]
    by_hand = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), targets, ignore_index=-100)
    assert loss.item() == pytest.approx(by_hand.item(), rel=1e-5)
    # It is not the loss over every token, which counting the prompt would give.
    every = batch["input_ids"][:, 1:].masked_fill(~batch["attention_mask"][:, 1:].bool(), -100)
    all_tokens = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), every)
    assert all_tokens.item() != pytest.approx(loss.item(), rel=1e-3)  # and it is not the all-token loss


def replay_args(tmp_path, model: Path, chats: list[dict], **kw) -> SFTRecipeConfig:
    documents = [{"text": "The capital of Peru is Lima."}, {"text": "Rome is a big city. " * 40}, {"text": " "}]
    tmp_path.mkdir(exist_ok=True)
    files = [str(write_jsonl(tmp_path / "docs.jsonl", documents))]
    return config(tmp_path, write_jsonl(tmp_path / "d.jsonl", chats), model, **{"replay_files": files, **kw})


def test_replay_mixes_blocks_of_pretraining_text_into_the_chats_with_their_own_loss(saved_model, tokenizer,
                                                                                   tmp_path):
    """`replay_share` of the rows are blocks of max_length tokens, every token a label; the chats keep the loss on
    their assistant turns only."""
    args = replay_args(tmp_path, saved_model, [MULTI_TURN] * 6, per_device_train_batch_size=3, replay_share=0.5)
    stage = SupervisedFineTuning(args)
    trainer = stage.build(None)
    assert stage.report["replayed blocks"] == 6 and len(trainer.train_dataset) == 12
    eos, chats, blocks = tokenizer.eos_token_id, 0, 0
    for batch in trainer.get_train_dataloader():
        for ids, labels, mask in zip(batch["input_ids"], batch["labels"], batch["attention_mask"]):
            real, kept = ids[mask.bool()].tolist(), [t for t in labels.tolist() if t != -100]
            if real[0] == tokenizer.bos_token_id:
                chats += 1
                assert kept == tokenizer("4").input_ids + [eos] + tokenizer("6").input_ids + [eos]
            else:
                blocks += 1
                assert kept == real and len(real) == args.max_length
    assert (chats, blocks) == (6, 6)


def test_replay_share_defaults_to_a_quarter_of_the_rows(saved_model, tmp_path):
    stage = SupervisedFineTuning(replay_args(tmp_path, saved_model, [MULTI_TURN] * 6))
    assert len(stage.build(None).train_dataset) == 8 and stage.report["replayed blocks"] == 2  # 6 chats, 2 blocks


def test_replay_blocks_are_the_documents_joined_by_eos_and_packed(tokenizer):
    """Pretraining's packing: each document followed by eos, in one shuffled order read again in turn, cut into
    blocks of exactly block_size tokens."""
    documents = ["The capital of Peru is Lima.", "Rome is a big city. " * 3, "3 plus 4 is 7."]
    blocks = replay_blocks(documents, tokenizer, 16, 20, seed=0)
    assert len(blocks) == 20 and {len(b) for b in blocks} == {16}
    stream, segments, piece = [t for b in blocks for t in b], [], []
    for token in stream:
        if token == tokenizer.eos_token_id:
            segments.append(piece)
            piece = []
        else:
            piece.append(token)
    ids = sorted(tokenizer(d, add_special_tokens=False).input_ids for d in documents)
    assert sorted(segments[:3]) == ids  # every document once per round
    assert segments[3:] == (segments[:3] * 6)[:len(segments) - 3]  # then again in the same order
    assert 20 * 16 // sum(len(i) + 1 for i in ids) >= 2  # the rounds above were really repeated


def test_replay_keeps_the_eval_loss_on_the_held_out_replies(saved_model, tokenizer, tmp_path):
    """The held-out chats are the same rows, scored on the same tokens, with replay or without."""
    chats = [{"messages": [{"role": "user", "content": f"What is {i} plus 1?"},
                           {"role": "assistant", "content": f"{i} plus 1 is {i + 1}."}]} for i in range(10)]
    losses = []
    for replay in (True, False):
        args = replay_args(tmp_path / str(replay), saved_model, chats, validation_fraction=0.3,
                           eval_strategy="steps", **({} if replay else {"replay_files": None}))
        losses.append(SupervisedFineTuning(args).build(None).evaluate()["eval_loss"])
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)


@pytest.mark.parametrize("kw, says", [
    (dict(replay_share=1.0), "replay_share must be between 0 and 1"),
    (dict(replay_share=0.5, replay_files=None), "replay_share needs replay_files"),
    (dict(assistant_only_loss=False), "leave assistant_only_loss and completion_only_loss unset"),
    (dict(replay_files=["nowhere.jsonl"]), "replay_files: no file at nowhere.jsonl"),
])
def test_a_replay_setting_that_cannot_work_is_refused_when_parsed(saved_model, tmp_path, kw, says):
    with pytest.raises((ValueError, FileNotFoundError), match=says):
        replay_args(tmp_path, saved_model, [MULTI_TURN], **kw)


CAPITALS = {"Korea": "Seoul", "France": "Paris", "Japan": "Tokyo", "Italy": "Rome", "Egypt": "Cairo",
            "Peru": "Lima", "Spain": "Madrid", "Kenya": "Nairobi"}


def test_learns_a_chat_task_and_stops_at_eos(tokenizer, tmp_path, model_folder):
    rows = [{"prompt": f"Capital of {k}?", "completion": f"The capital of {k} is {v}."} for k, v in CAPITALS.items()]
    data = write_jsonl(tmp_path / "caps.jsonl", rows * 8)
    args = config(tmp_path, data, model_folder(tmp_path, tokenizer, "base"), max_steps=150, learning_rate=3e-3,
                  per_device_train_batch_size=16, lr_scheduler_type="constant", system_prompt="Answer briefly.")
    trainer = sft(args)
    model = AutoModelForCausalLM.from_pretrained(args.output_dir).eval()
    prompts = [[{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": f"Capital of {k}?"}]
               for k in CAPITALS]
    answers = complete(model, tokenizer, prompts, 30, do_sample=False, skip_special_tokens=False)
    correct = [a == f"The capital of {k} is {v}.<|eos|>" for a, (k, v) in zip(answers, CAPITALS.items())]
    assert sum(correct) >= 6, answers
    assert trainer.state.log_history[0]["loss"] > 2 * trainer.state.log_history[-2]["loss"]
    assert all(h["tokens_per_second"] > 0 for h in trainer.state.log_history if "loss" in h)
    assert json.loads((tmp_path / "out" / "training_summary.json").read_text())["throughput"]["tokens_per_second"] > 0


def test_lora_saves_reloads_merges(tokenizer, tmp_path, saved_model):
    from peft import PeftModel

    rows = [{"prompt": f"Say {i}", "completion": f"{i}!"} for i in range(8)]
    args = config(tmp_path, write_jsonl(tmp_path / "d.jsonl", rows), saved_model, use_peft=True, lora_r=4,
                  merge_adapter=True, max_steps=3, learning_rate=1e-2, logging_steps=1)
    trainer = sft(args)
    out = Path(args.output_dir)
    assert (out / "adapter_model.safetensors").exists() and (out / "adapter_config.json").exists()
    base = AutoModelForCausalLM.from_pretrained(saved_model)
    peft_model = PeftModel.from_pretrained(base, out).eval()
    merged = AutoModelForCausalLM.from_pretrained(out / "merged").eval()
    assert isinstance(merged, HfGptForCausalLM)
    ids = torch.tensor([tokenizer("Say 3").input_ids])
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, peft_model(ids).logits, atol=1e-4, rtol=1e-4)
        plain = AutoModelForCausalLM.from_pretrained(saved_model).eval()(ids).logits
    assert not torch.allclose(merged(ids).logits, plain, atol=1e-4)  # the adapter changed something
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert losses[-1] < losses[0]  # 3 steps at lr 1e-2 on 8 rows: the adapters learn
    # The adapter folder itself is a model to hf_gpt's loader (`hf-gpt generate/chat <folder>`): base + adapter.
    from hf_gpt.generation import generate_text
    from hf_gpt.loading import load_model

    with torch.no_grad():
        torch.testing.assert_close(load_model(AutoModelForCausalLM, out).eval()(ids).logits, merged(ids).logits,
                                   atol=1e-4, rtol=1e-4)
    expected = generate_text(str(out / "merged"), "Say 3", temperature=0, max_new_tokens=4)
    assert generate_text(str(out), "Say 3", temperature=0, max_new_tokens=4) == expected
    # An adapter with a weight the model has no place for is refused, not half-applied with a warning.
    import shutil

    from safetensors.torch import load_file, save_file

    odd = Path(shutil.copytree(out, tmp_path / "odd", ignore=shutil.ignore_patterns("merged", "checkpoint-*")))
    weights = load_file(odd / "adapter_model.safetensors")
    save_file({**weights, "base_model.model.nowhere.lora_A.weight": torch.zeros(4, 4)},
              odd / "adapter_model.safetensors")
    with pytest.raises(ValueError, match="no place for .*nowhere"):
        load_model(AutoModelForCausalLM, odd)


@pytest.mark.parametrize("relative", ["sft_self_instruct_human/self_instruct_human.jsonl",
                                      "sft_ko_chatbot/chatbot_qa.jsonl"])
def test_short_run_on_real_data_lowers_held_out_loss(relative, tokenizer, tmp_path, shared_data, model_folder):
    data = shared_data(relative)
    args = config(tmp_path, data, model_folder(tmp_path, tokenizer, "base"), max_rows=200, max_steps=30,
                  validation_fraction=0.2, eval_strategy="steps", eval_steps=30, eval_on_start=True,
                  learning_rate=3e-3, per_device_train_batch_size=8, num_sample_answers=2)
    trainer = sft(args)
    evals = [h["eval_loss"] for h in trainer.state.log_history if "eval_loss" in h]
    assert evals[-1] < evals[0] - 0.3, evals
    assert (Path(args.output_dir) / "samples.md").exists()


def test_packing_keeps_the_response_only_loss(saved_model, tokenizer, tmp_path):
    rows = [{"prompt": f"Question {i}?", "completion": f"Answer {i}."} for i in range(16)]
    args = config(tmp_path, write_jsonl(tmp_path / "d.jsonl", rows), saved_model, packing=True, max_steps=2,
                  logging_steps=1)
    trainer = SupervisedFineTuning(args).build(None)
    batch = next(iter(trainer.get_train_dataloader()))
    ids, labels = batch["input_ids"][0].tolist(), batch["labels"][0].tolist()
    assert ids.count(tokenizer.bos_token_id) >= 2  # several examples share one row
    kept = [t for t in labels if t != -100]
    assert kept.count(tokenizer.eos_token_id) == ids.count(tokenizer.eos_token_id)  # every reply's eos counts
    assert tokenizer.convert_tokens_to_ids("<|user|>") not in kept  # prompts never do
    # TRL packs padding-free (one row, position_ids restarting at 0 for each conversation): the model attends within
    # each conversation only (create_causal_mask reads the boundaries from position_ids), on SDPA too.
    model = trainer.model.eval()
    positions = batch["position_ids"][0]
    bounds = (positions == 0).nonzero().flatten().tolist() + [len(positions)]
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits[0]
        apart = torch.cat([model(input_ids=batch["input_ids"][:, a:b]).logits[0] for a, b in zip(bounds, bounds[1:])])
    assert len(bounds) > 2 and torch.allclose(packed, apart, atol=1e-5)
    model.train()
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert losses and all(math.isfinite(x) for x in losses)
