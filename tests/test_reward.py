import json
import random
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForSequenceClassification

from hf_gpt.baselines import length_rule
from hf_gpt.chat import text_to_messages
from hf_gpt.reward import (
    RewardRecipeConfig,
    prepare_preferences,
    render_for_reward,
    replies,
    to_preference,
    train_reward_model,
)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_hh_transcript_becomes_turns():
    prompt = "\n\nHuman: Hi there\n\nAssistant: Hello!\n\nHuman: How are you?\n\nAssistant:"
    assert text_to_messages(prompt) == [
        {"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "How are you?"}]
    assert text_to_messages("Plain question?") == [{"role": "user", "content": "Plain question?"}]


@pytest.mark.parametrize("row, message", [
    ({"prompt": "q", "chosen": "a"}, "field 'rejected' is missing"),
    ({"prompt": "q", "chosen": "", "rejected": "b"}, "field 'chosen' is empty"),
    ({"prompt": "q", "chosen": "same", "rejected": "same"}, "identical"),
])
def test_bad_pairs_name_the_problem(row, message):
    with pytest.raises(ValueError, match=message):
        to_preference(row)


def test_bad_pairs_are_counted(tokenizer):
    rows = [{"prompt": "q", "chosen": "a", "rejected": "b"}, {"prompt": "q", "chosen": "x", "rejected": "x"},
            {"prompt": "long " * 100, "chosen": "a", "rejected": "b"}]
    pairs, report = prepare_preferences(Dataset.from_list(rows), tokenizer, max_length=64)
    assert report == {"kept": 1, "skipped: bad row": 1, "dropped: longer than the context": 1}
    with pytest.raises(ValueError, match="missing \\['rejected'\\]"):
        prepare_preferences(Dataset.from_list([{"prompt": "q", "chosen": "a"}]), tokenizer, max_length=64)


def test_a_dialogue_longer_than_the_context_loses_its_oldest_turns_not_the_pair(tokenizer):
    old = "\n\nHuman: " + "tell me more " * 30 + "\n\nAssistant: " + "well " * 30
    prompt = old + "\n\nHuman: Is it late?\n\nAssistant:"
    rows = [{"prompt": prompt, "chosen": "Yes, it is late.", "rejected": "No."},
            {"prompt": "\n\nHuman: " + "long " * 100 + "\n\nAssistant:", "chosen": "a", "rejected": "b"}]
    assert len(render_for_reward(tokenizer, text_to_messages(prompt), "Yes, it is late.")) > 64
    pairs, report = prepare_preferences(Dataset.from_list(rows), tokenizer, max_length=64, system_prompt="Be kind.")
    assert report == {"kept": 1, "shortened (oldest turns dropped to fit max_length)": 1,
                      "dropped: longer than the context": 1}  # one question too long alone is still dropped
    pair = pairs[0]
    assert pair["prompt"] == [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Is it late?"}]
    assert pair["chosen"] == [{"role": "assistant", "content": "Yes, it is late."}]
    assert len(render_for_reward(tokenizer, pair["prompt"], pair["chosen"][0]["content"])) <= 64


def parity_pairs(numbers: list[int]) -> list[dict]:
    rows = []
    for n in numbers:
        digits = " ".join(str(n))
        right, wrong = ("yes", "no") if n % 2 == 0 else ("no", "yes")
        rows.append({"prompt": f"Is {digits} even?", "chosen": right, "rejected": wrong})
    return rows


def test_reward_model_learns_a_preference_and_renders_like_ppo(tokenizer, tmp_path, model_folder):
    numbers = random.Random(0).sample(range(100, 1000), 400)
    data = write_jsonl(tmp_path / "pairs.jsonl", parity_pairs(numbers))
    args = RewardRecipeConfig(output_dir=str(tmp_path / "rm"),
                              model_name_or_path=str(model_folder(tmp_path, tokenizer, "sft")),
                              data_files=[str(data)], validation_fraction=0.25, per_device_train_batch_size=16,
                              max_steps=200, learning_rate=1e-3, eval_steps=200, save_strategy="no",
                              disable_tqdm=True, lr_scheduler_type="constant")
    trainer = train_reward_model(args)  # 160 steps at 1e-3 already ranked 1.00 for seeds 0-7 (120 at 3e-3: 0.59-1.00)
    metrics = json.loads((tmp_path / "rm" / "reward_metrics.json").read_text())
    assert metrics["pairwise_accuracy"] >= 0.9, metrics  # on 100 held-out numbers never seen in training
    assert all(h["tokens_per_second"] > 0 for h in trainer.state.log_history if "loss" in h)
    assert json.loads((tmp_path / "rm" / "training_summary.json").read_text())["throughput"]["device"] == "cpu"
    # What RewardTrainer trained on is exactly what PPO will score.
    row = trainer.train_dataset[0]
    example = to_preference({"prompt": "Is 4 2 even?", "chosen": "yes", "rejected": "no"})
    assert row["chosen_ids"][-1] == tokenizer.eos_token_id
    rendered = render_for_reward(tokenizer, example["prompt"], "yes")
    tokenized = trainer.processing_class.apply_chat_template(example["prompt"] + example["chosen"],
                                                             return_dict=True)["input_ids"]
    assert rendered == list(tokenized)
    # The saved RM loads as a sequence classifier and ranks a fresh pair.
    rm = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm").eval()
    prompt = text_to_messages("Is 7 7 8 even?")
    with torch.no_grad():
        good = rm(torch.tensor([render_for_reward(tokenizer, prompt, "yes")])).logits.item()
        bad = rm(torch.tensor([render_for_reward(tokenizer, prompt, "no")])).logits.item()
    assert good > bad


def test_the_new_score_head_is_one_plain_line_and_expected_warnings_are_gone(tokenizer, tmp_path, model_folder,
                                                                           capfd, caplog, recwarn):
    rows = [{"prompt": "Human question?", "chosen": " A fine answer.", "rejected": " A rude answer."}] * 4
    sft_folder = model_folder(tmp_path, tokenizer, "sft")
    train_reward_model(RewardRecipeConfig(output_dir=str(tmp_path / "rm"), model_name_or_path=str(sft_folder),
                                          data_files=[str(write_jsonl(tmp_path / "p.jsonl", rows))],
                                          validation_fraction=0.0, max_steps=1, save_strategy="no"))
    out, err = capfd.readouterr()
    said = [r.getMessage() for r in caplog.records]
    assert said.count(f"{sft_folder} has no score head: a new one, trained in this stage.") == 1
    assert "MISSING" not in out + err + " ".join(said) and "\x1b[" not in out + err
    assert not [w for w in recwarn if "pin_memory" in str(w.message)]


def test_reward_training_sees_the_same_ids_as_ppo_scoring(tokenizer, tmp_path, model_folder):
    rows = [{"prompt": "Human question?", "chosen": " A fine answer.", "rejected": " A rude answer."}] * 4
    args = RewardRecipeConfig(output_dir=str(tmp_path / "rm"),
                              model_name_or_path=str(model_folder(tmp_path, tokenizer, "sft")),
                              data_files=[str(write_jsonl(tmp_path / "p.jsonl", rows))], validation_fraction=0.0,
                              max_steps=1, save_strategy="no", disable_tqdm=True)
    trainer = train_reward_model(args)
    row = trainer.train_dataset[0]
    prompt = text_to_messages("Human question?")
    assert row["chosen_ids"] == render_for_reward(tokenizer, prompt, "A fine answer.")
    assert row["rejected_ids"] == render_for_reward(tokenizer, prompt, "A rude answer.")


def test_hh_rlhf_reward_model_runs(tokenizer, tmp_path, shared_data, model_folder):
    path = shared_data("pref_hh_rlhf_harmless_test/harmless_base_test.jsonl")
    args = RewardRecipeConfig(output_dir=str(tmp_path / "rm"),
                              model_name_or_path=str(model_folder(tmp_path, tokenizer, "sft")),
                              data_files=[str(path)], max_rows=64, validation_fraction=0.25, max_steps=4,
                              per_device_train_batch_size=4, eval_steps=4, save_strategy="no", disable_tqdm=True)
    trainer = train_reward_model(args)
    metrics = json.loads((tmp_path / "rm" / "reward_metrics.json").read_text())
    assert metrics["data"]["kept"] + metrics["data"].get("dropped: longer than the context", 0) == 64
    # The reported accuracy is the share of held-out pairs (25 % of the kept ones) the saved model ranks right.
    held = trainer.eval_dataset
    assert len(held) == metrics["data"]["kept"] - round(metrics["data"]["kept"] * 0.75) == metrics["eval_pairs"]
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm").eval()
    with torch.no_grad():
        score = lambda ids: model(torch.tensor([ids])).logits[0, 0].item()
        right = [score(row["chosen_ids"]) > score(row["rejected_ids"]) for row in held]
    assert metrics["pairwise_accuracy"] == pytest.approx(sum(right) / len(right))
    rule = length_rule(replies(trainer.train_dataset), replies(held))  # the shallowest ranker, the same pairs
    assert {k: metrics[k] for k in rule} == rule and rule["length_rule_prefers"] in ("shorter", "longer")
