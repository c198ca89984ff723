"""`hf-gpt eval`: lm-evaluation-harness scores saved folders on hf-gpt's tasks (and any of its own), the results land
beside the model and in its model card, and on the demo's models they are the report's own figures."""

import json
import subprocess
import sys

import pytest
import yaml
from huggingface_hub import ModelCard

pytest.importorskip("lm_eval", reason="lm-evaluation-harness is in the dev extra (hf-gpt[eval])")

from hf_gpt.eval_harness import evaluate, own_tasks  # noqa: E402
from hf_gpt.hub import render_card  # noqa: E402


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hf_gpt.cli", "eval", *args], capture_output=True, text=True,
                          timeout=600)


def test_results_go_beside_the_model_and_into_its_card(model_folder, tokenizer, tmp_path):
    folder = model_folder(tmp_path, tokenizer)
    done = cli(str(folder), "--tasks", "world_facts_held_out", "world_chat_seen", "--limit", "6")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "| world_facts_held_out | acc |" in done.stdout and "| world_chat_seen | exact_match |" in done.stdout
    report = json.loads((folder / "lm_eval_results.json").read_text())
    facts, chat = report["tasks"]["world_facts_held_out"], report["tasks"]["world_chat_seen"]
    assert facts["n"] == chat["n"] == 6 and report["limit"] == 6
    assert facts["chat_template"] is False and chat["chat_template"] is True  # the chat task goes through it
    assert 0 <= facts["metrics"]["acc"]["value"] <= 1 and facts["metrics"]["acc"]["stderr"] is not None
    card = ModelCard((folder / "README.md").read_text())
    results = {(r.dataset_type, r.metric_type): r.metric_value for r in card.data.eval_results}
    assert results[("world_facts_held_out", "acc")] == facts["metrics"]["acc"]["value"]
    assert results[("world_chat_seen", "exact_match")] == chat["metrics"]["exact_match"]["value"]
    assert "## Evaluation (lm-evaluation-harness)" in render_card(folder, "me/model")  # what `hf-gpt push` uploads


def test_a_wrong_task_or_an_unreachable_data_set_is_one_line(saved_model, tmp_path):
    from hf_gpt.cli import main

    def stop(*tasks: str) -> str:
        with pytest.raises(SystemExit) as stopped:
            main(["eval", str(saved_model), "--tasks", *tasks, "--limit", "2", "--output-dir", str(tmp_path)])
        message = str(stopped.value.code)
        assert message.startswith("hf-gpt: error: ") and "\n" not in message
        return message

    unknown = stop("world_fact")
    assert "Unknown task world_fact" in unknown and all(name in unknown for name in own_tasks())
    assert "hellaswag: the task's data could not be downloaded" in stop("hellaswag")  # HF_HUB_OFFLINE=1 in tests
    assert not (tmp_path / "lm_eval_results.json").exists()


def test_korean_multiple_choice_from_the_shared_data(saved_model, tmp_path, shared_data):
    shared_data("ko_nsmc_reviews/nsmc_raw_reviews.jsonl")
    shared_data("ko_klue_sentences/klue-nli-v1.1_dev.json")
    report = evaluate(str(saved_model), ["nsmc_ko", "klue_nli_ko"], limit=10, output_dir=tmp_path)
    assert {task: entry["n"] for task, entry in report["tasks"].items()} == {"nsmc_ko": 10, "klue_nli_ko": 10}


def test_every_shipped_task_file_names_a_task_the_harness_runs():
    from lm_eval.tasks import TaskManager

    from hf_gpt.eval_harness import tasks_path

    manager = TaskManager(include_path=tasks_path())
    for name in own_tasks():
        assert manager.match_tasks([name]), name
    import importlib.resources

    shipped = [p for p in (importlib.resources.files("hf_gpt") / "lm_eval_tasks").iterdir() if p.name.endswith(".yaml")]
    for path in shipped:
        assert yaml.load(path.read_text(), Loader=yaml.BaseLoader)["task"] == path.name.removesuffix(".yaml")


def test_the_demos_models_score_as_the_report_says(demo_run):
    """Same questions, same system prompts, same greedy decoding: the harness's exact match is the report's."""
    out, metrics = demo_run
    harness = metrics["lm_eval"]
    for model in ("sft", "ppo"):
        report = metrics[model]["accuracy"][model]
        for split in ("held_out", "seen"):
            entry = harness[model][f"world_chat_{split}"]
            assert entry["n"] == report[split]["n"]
            assert abs(entry["metrics"]["exact_match"]["value"] - report[split]["exact"]) <= 2 / entry["n"]
            assert abs(entry["metrics"]["right_fact"]["value"] - report[split]["right_fact"]) <= 2 / entry["n"]
    recall = metrics["sft"]["fact_recall_base"]["held_out"]  # greedy continuation; the harness ranks the endings
    assert abs(harness["base"]["world_facts_held_out"]["metrics"]["acc"]["value"] - recall) <= 0.1
    assert "## lm-evaluation-harness" in (out / "report.md").read_text()
    assert json.loads((out / "ppo" / "lm_eval_results.json").read_text())["tasks"].keys() == {
        "world_chat_held_out", "world_chat_seen"}
