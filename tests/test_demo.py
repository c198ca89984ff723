"""The whole pipeline (tokenizer → pretraining → SFT → reward model → PPO → report) at CI scale, asserting that
every stage's metric moves the right way."""

import json

import pytest

from hf_gpt import world
from hf_gpt.demo import SCALES, Pipeline, Scale, main, preset_data, write_jsonl

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    return out, Pipeline(out, "world", SCALES["tiny"], fresh=False).run()


def test_each_stage_moves_the_right_way(run):
    _, m = run
    assert m["base"]["val_bpb_last"] < 0.8 * m["base"]["val_bpb_first"]
    assert m["sft"]["accuracy_after"] > m["sft"]["accuracy_before"] + 0.3
    assert m["sft"]["stops_at_eos_after"] == 1.0
    assert m["sft"]["eval_loss_curve"][-1][1] < m["sft"]["eval_loss_curve"][0][1]
    assert m["reward"]["pairwise_accuracy"] > 0.7
    # PPO with the RM's score as the only reward: the score rises, the KL stays small, and held-out accuracy rises
    # because the RM prefers the one-sentence answers that most demonstrations did not give.
    # Measured at this scale, training seeds 0 / 1 / 2 (`--seed`): score −0.17 → 1.30 / −0.94 → 1.25 / −1.29 → 0.30,
    # KL ≤ 0.62 / 0.39 / 0.40, greedy 0.78 → 0.96 / 0.68 → 0.90 / 0.48 → 0.64, sampled (200 answers, s.e. ≈ 0.03)
    # 0.25 → 0.42 / 0.17 → 0.29 / 0.14 → 0.17: the sampled gain is only asserted not to be a loss.
    assert m["ppo"]["score_last"] > m["ppo"]["score_first"] + 0.5
    assert m["ppo"]["kl_max"] < 2.0
    assert m["ppo"]["accuracy_after"] > m["sft"]["accuracy_after"] + 0.05
    assert m["ppo"]["accuracy_sampled_after"] > m["sft"]["accuracy_sampled_after"] - 0.03


def test_report_and_plots(run):
    out, _ = run
    report = (out / "report.md").read_text()
    for heading in ("Pretraining", "SFT", "Reward model", "PPO", "Talking to the final model"):
        assert heading in report
    assert "Exact-match accuracy" in report and "| ppo |" in report  # the base → SFT → PPO accuracy table
    for name in ("position_encoding", "attention", "sft_loss_mask", "pretrain_bpb", "sft_eval_loss", "ppo_reward_kl"):
        assert (out / "plots" / f"{name}.png").read_bytes()[:8] == PNG, name
    assert (out / "base" / "curves.png").read_bytes()[:8] == PNG


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
            folder.mkdir()
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


def test_pipeline_on_named_sources(tmp_path):
    """The real-data path (no checker, prompts from the preference data), with the SFT and preference data given as
    dataset folders: `load_dataset(name)` reads them as it reads a Hub name."""
    pre = write_jsonl(tmp_path / "pre.jsonl", [{"text": t} for t in world.pretraining_documents(300)])
    write_jsonl(tmp_path / "sft" / "train.jsonl", world.sft_rows(64))
    write_jsonl(tmp_path / "pref" / "train.jsonl", world.preference_rows(64))
    scale = Scale(pretrain_steps=5, sft_rows=64, sft_steps=2, preference_rows=64, reward_steps=2, ppo_steps=2,
                  width=32, layers=1)
    out = tmp_path / "run"
    m = Pipeline(out, f"{pre},{tmp_path / 'sft'},{tmp_path / 'pref'}", scale, fresh=False).run()
    assert m["base"]["steps"] == 5 and m["sft"]["steps"] == 2 and m["ppo"]["steps"] == 2
    assert "accuracy_after" not in m["sft"]  # no checker for real data
    assert "Exact-match accuracy" not in (out / "report.md").read_text()
    assert (out / "ppo" / "model.safetensors").exists()
