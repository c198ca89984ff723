"""The whole pipeline (tokenizer → pretraining → SFT → reward model → PPO → report) at CI scale, asserting that
every stage's metric moves the right way."""

import json
import re
from pathlib import Path

import pytest

from hf_gpt import world
from hf_gpt.data import write_jsonl
from hf_gpt.demo import SCALES, Pipeline, Scale, main, preset_data

pytestmark = pytest.mark.slow

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def run(demo_run):
    return demo_run


def test_each_stage_moves_the_right_way(run):
    _, m = run
    assert m["base"]["val_bpb_last"] < 0.9 * m["base"]["val_bpb_first"]
    base, after_sft = m["sft"]["accuracy"]["base"], m["sft"]["accuracy"]["sft"]
    after_ppo = m["ppo"]["accuracy"]["ppo"]
    # SFT teaches the chat format: answers stop at eos, and training questions are answered (this scale's figures
    # are in docs/experiments.md).
    assert after_sft["seen"]["stops_at_eos"] >= 0.95 and after_sft["held_out"]["stops_at_eos"] >= 0.95
    assert after_sft["seen"]["exact"] > base["seen"]["exact"] + 0.1
    assert after_sft["held_out"]["exact"] <= after_sft["seen"]["exact"]  # the gap between recited and new questions
    assert 0.0 < m["sft"]["fact_recall_base"]["held_out"]  # pretraining put some held-out facts in the base model
    assert m["sft"]["eval_loss_curve"][-1][1] < m["sft"]["eval_loss_curve"][0][1]
    assert m["reward"]["pairwise_accuracy"] > 0.7
    # PPO with the RM's score as the only reward: the score rises, the KL stays small, and the format the raters
    # prefer (one sentence) replaces the rambling that most demonstrations had, on seen and held-out questions.
    assert m["ppo"]["score_last"] > m["ppo"]["score_first"] + 0.5
    assert m["ppo"]["kl_max"] < 2.0
    for split in ("seen", "held_out"):
        assert after_ppo[split]["one_sentence"] >= max(0.95, after_sft[split]["one_sentence"]), split
    assert sum(after_ppo[s]["one_sentence"] - after_sft[s]["one_sentence"] for s in ("seen", "held_out")) > 0.1
    assert after_ppo["seen"]["exact"] > after_sft["seen"]["exact"] - 0.1


def test_report_and_plots(run):
    out, m = run
    report = (out / "report.md").read_text()
    for heading in ("Pretraining", "SFT", "Reward model", "PPO", "Talking to the final model"):
        assert heading in report
    assert "seen and held-out questions" in report
    assert "| ppo | held_out (48) |" in report and "| sft | seen (48) |" in report  # base → SFT → PPO, per split
    for name in ("position_encoding", "attention", "sft_loss_mask", "pretrain_bpb", "sft_eval_loss", "ppo_reward_kl"):
        assert (out / "plots" / f"{name}.png").read_bytes()[:8] == PNG, name
    assert (out / "base" / "curves.png").read_bytes()[:8] == PNG
    # Every figure beside its baseline; the world's facts follow from more than the last token, so the GPT beats the
    # bigram table, and the reward model beats a coin by far.
    verdicts = {row["stage"]: row for row in json.loads((out / "summary.json").read_text())["baselines"]}
    assert verdicts["pretraining"]["beats baseline"] == "yes" and verdicts["reward model"]["beats baseline"] == "yes"
    assert verdicts["PPO"]["beats baseline"] == "yes"  # the score rose by more than its noise
    rule = m["reward"]
    assert verdicts["reward model"]["baseline"].endswith(
        f"at 95 %); the {rule['length_rule_prefers']} reply always: {rule['length_rule_accuracy']:.3f}")
    assert "Every figure beside its baseline" in report


def test_second_run_reuses_finished_stages(run, capsys):
    out, first = run
    stamp = (out / "sft" / "stage.json").stat().st_mtime
    main(["--scale", "tiny", "--output-dir", str(out)])
    assert "reusing" in capsys.readouterr().out
    assert (out / "sft" / "stage.json").stat().st_mtime == stamp
    assert json.loads((out / "ppo" / "stage.json").read_text())["steps"] == first["ppo"]["steps"]


def test_another_seed_redoes_a_finished_stage(tmp_path):
    runs = []

    def stage(seed: int) -> dict:
        def train(folder):
            folder.mkdir(exist_ok=True)  # a redone stage trains afresh into its folder (the run folder decides)
            runs.append(seed)
            return {}
        return Pipeline(tmp_path, "world", SCALES["tiny"], fresh=False, seed=seed).stage("base", train)

    assert stage(0)["seed"] == 0 and stage(0)["seed"] == 0 and runs == [0]  # the second call reuses
    assert stage(1)["seed"] == 1 and runs == [0, 1]  # same folder, other seed: redone, not reused


def test_unknown_data_preset_is_one_line(tmp_path):
    with pytest.raises(SystemExit, match="Unknown DATA preset 'martian'"):
        main(["--data", "martian", "--output-dir", str(tmp_path)])


def test_data_sources_map_to_files_or_hub_names(tmp_path):
    (tmp_path / "pre.txt").write_text("some text\n")
    data = preset_data(f"{tmp_path / 'pre.txt'},{tmp_path},org/preferences")
    assert data == {"pretrain": {"data_files": [str(tmp_path / "pre.txt")]}, "sft": {"dataset_name": str(tmp_path)},
                    "preferences": {"dataset_name": "org/preferences"}}
    with pytest.raises(FileNotFoundError, match="missing.jsonl is missing"):
        preset_data("missing.jsonl,org/a,org/b")
    with pytest.raises(ValueError, match="give three sources"):
        preset_data("org/a,org/b")
    with pytest.raises(SystemExit, match="give three sources"):
        main(["--data", "org/a,", "--output-dir", str(tmp_path / "out")])


def test_pipeline_on_named_sources(tmp_path, capsys):
    """The real-data path (no checker, prompts from the preference data), with the SFT and preference data given as
    dataset folders (`load_dataset(name)` reads them as it reads a Hub name): steps follow the data size, every
    figure stands beside its baseline, and a stage that does not beat it is flagged, not presented as a result."""
    pre = write_jsonl(tmp_path / "pre.jsonl", [{"text": t} for t in world.pretraining_documents(300)])
    write_jsonl(tmp_path / "sft" / "train.jsonl", world.sft_rows(64))
    write_jsonl(tmp_path / "pref" / "train.jsonl", world.preference_rows(48))
    scale = Scale(pretrain_epochs=1, sft_epochs=2, reward_epochs=1, sft_rows=None, preference_rows=None, width=32,
                  layers=1, sft_baseline=True)
    out = tmp_path / "run"
    m = Pipeline(out, f"{pre},{tmp_path / 'sft'},{tmp_path / 'pref'}", scale, fresh=False).run()
    # 64 SFT rows → 57 train (train_test_split holds out ceil(6.4)), 4 batches of 16 an epoch; 48 pairs → 43, 3.
    assert (m["sft"]["steps"], m["sft"]["epochs"]) == (2 * 4, 2.0)
    assert m["sft_scratch"]["steps"] == 2 * 4
    assert (m["reward"]["steps"], m["reward"]["eval_pairs"]) == (3, 5)
    assert m["base"]["epochs"] == pytest.approx(1.0)
    assert m["base"]["baseline_unigram_bpb"] > m["base"]["baseline_bigram_bpb"] > 0
    assert "accuracy" not in m["sft"]  # no checker for real data
    # Three steps of reward modelling on five held-out pairs cannot beat a coin: flagged, and PPO is not run on it.
    assert not m["reward"]["beats_baseline"] and "beat chance" in m["ppo"]["skipped"]
    summary = json.loads((out / "summary.json").read_text())
    verdicts = {row["stage"]: row["beats baseline"] for row in summary["baselines"]}
    assert verdicts["reward model"] == "**no**" and summary["final_model"] == "sft"
    assert verdicts["SFT"] == ("yes" if m["sft"]["eval_loss"] < m["sft_scratch"]["eval_loss"] else "**no**")
    report = (out / "report.md").read_text()
    assert "held-out questions" not in report and "beside its baseline" in report
    assert "same SFT without pretraining" in report and "| held-out prompt | pretraining + SFT | SFT alone |" in report
    assert not (out / "ppo").exists()
    printed = capsys.readouterr().out  # each stage numbered out of the plan, skipped ones too
    assert [line.split("]")[0] + "]" for line in printed.splitlines() if line.startswith("[stage ")] == [
        "[stage 1/5: base]", "[stage 2/5: sft]", "[stage 3/5: sft_scratch]", "[stage 4/5: reward]",
        "[stage 5/5: ppo]"]


def test_presets_read_the_shared_data_beside_the_working_directory(tmp_path, monkeypatch):
    """Presets find ../shared/data from where the demo runs (or HF_GPT_SHARED_DATA), not from where the package is
    installed; the Korean preset, with no Korean preference pairs, has no reward or PPO data."""
    from hf_gpt.demo import PRESETS

    repo, shared = tmp_path / "repo", tmp_path / "shared" / "data"
    for preset in PRESETS.values():
        for path in preset.pretrain + preset.sft + (preset.preferences or []):
            (shared / path).parent.mkdir(parents=True, exist_ok=True)
            (shared / path).write_text("{}\n")
    repo.mkdir()
    monkeypatch.chdir(repo)
    monkeypatch.delenv("HF_GPT_SHARED_DATA", raising=False)
    korean = preset_data("korean")
    assert set(korean) == {"pretrain", "sft"} and Path(korean["sft"]["data_files"][0]).resolve().is_file()
    assert set(preset_data("english")) == {"pretrain", "sft", "preferences"}
    monkeypatch.chdir(tmp_path)  # elsewhere: told where the files were looked for
    with pytest.raises(FileNotFoundError, match="HF_GPT_SHARED_DATA"):
        preset_data("english")
    monkeypatch.setenv("HF_GPT_SHARED_DATA", str(shared))
    assert preset_data("english")["preferences"]["data_files"] == [str(shared / PRESETS["english"].preferences[0])]
    with pytest.raises(SystemExit, match="does not apply to the korean preset"):
        main(["--data", "korean", "--scale", "tiny"])


ANSWER_FORMS = {  # one sentence in the form of the question's kind and language (the values may be wrong)
    ("capital", "en"): r"The capital of [A-Z]\w+ is [A-Z]\w+\.", ("sum", "en"): r"\d plus \d is \d+\.",
    ("capital", "ko"): r"[가-힣]+의 수도는 [가-힣]+입니다\.", ("sum", "ko"): r"\d 더하기 \d[은는] \d+입니다\.",
}


def test_final_model_answers_without_the_training_system_prompt(run, serve):
    """Through `hf-gpt serve` and the official openai client: no system message, the lecture's, or one never seen in
    training all get one-sentence answers in the question's own form, about as often right as with a trained one.
    (Before the world varied its system prompts, "What is the capital of Japan?" without one got " plus 5.")"""
    pytest.importorskip("openai", reason="openai (dev extra) is needed for the serving test")
    from openai import OpenAI

    out, _ = run
    client = OpenAI(base_url=serve(out / "ppo"), api_key="not-needed")
    questions = [r for r in world.eval_rows("seen", 12)]
    systems = {"none": None, "training": world.SYSTEM_PROMPT, "lecture": world.LECTURE_SYSTEM_PROMPT,
               "unseen": "Be brief and correct."}
    right = {}
    for name, system in systems.items():
        replies = [client.chat.completions.create(model=str(out / "ppo"), messages=world.chat_prompt(
            q["prompt"], system), temperature=0, max_tokens=32).choices[0].message.content.strip() for q in questions]
        in_form = [bool(re.fullmatch(ANSWER_FORMS[q["kind"], q["language"]], r)) for q, r in zip(questions, replies)]
        # Passed at this scale (seed 0); the in-form share and exact figures move with the scale (see the report).
        assert sum(in_form) >= 0.75 * len(questions), (name, replies)
        right[name] = sum(r == q["answer"] for q, r in zip(questions, replies)) / len(questions)
    assert right["none"] >= right["training"] - 0.25, right
    assert max(right.values()) > 0, right


def test_the_report_measures_the_final_model_in_one_long_conversation(run):
    out, m = run
    conversation = m["ppo"]["conversation"]
    assert conversation["questions"] == 96 and 0 <= conversation["in_conversation"] <= 1
    summary = json.loads((out / "summary.json").read_text())  # every figure README quotes is there
    assert summary["stages"]["ppo"]["conversation"] == conversation
    assert summary["stages"]["sft"]["accuracy"]["sft"]["held_out"]["exact"] == m["sft"]["accuracy"]["sft"][
        "held_out"]["exact"] and "seconds" in summary["stages"]["base"] and "bpb_curve" not in summary["stages"]["base"]
    report = (out / "report.md").read_text()
    assert (f"{conversation['in_conversation']:.2f} answered with the right fact first, against "
            f"{conversation['alone']:.2f} when each is asked alone (96 questions)") in report
    # Per split, the shares and flips add up to the whole, and the report's table shows them.
    splits = conversation["by_split"]
    assert sorted(splits) == ["held_out", "seen"] and sum(v["questions"] for v in splits.values()) == 96
    for key in ("lost", "gained"):
        assert sum(v[key] for v in splits.values()) == conversation[key]
    for key in ("alone", "in_conversation"):
        assert abs(sum(v[key] * v["questions"] for v in splits.values()) / 96 - conversation[key]) < 1e-9
    change = (conversation["gained"] - conversation["lost"]) / 96
    assert conversation["in_conversation"] - conversation["alone"] == pytest.approx(change)
    held = splits["held_out"]
    assert (f"| held-out (48) | {held['alone']:.2f} | {held['in_conversation']:.2f} | {held['lost']} | "
            f"{held['gained']} |") in report
