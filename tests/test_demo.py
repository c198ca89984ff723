"""The whole pipeline (tokenizer → pretraining → SFT → reward model → PPO → report) at CI scale, asserting that
every stage's metric moves the right way."""

import json

import pytest

from hf_gpt.demo import SCALES, Pipeline, main

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
    # (greedy and sampled) because the RM prefers the one-sentence answers that most demonstrations did not give.
    # Measured at this scale: score -0.17 → 1.30, KL ≤ 0.62, greedy 0.78 → 0.96, sampled 0.25 → 0.42.
    assert m["ppo"]["score_last"] > m["ppo"]["score_first"] + 0.5
    assert m["ppo"]["kl_max"] < 2.0
    assert m["ppo"]["accuracy_after"] > m["sft"]["accuracy_after"] + 0.05
    assert m["ppo"]["accuracy_sampled_after"] > m["sft"]["accuracy_sampled_after"] + 0.05


def test_report_and_plots(run):
    out, _ = run
    report = (out / "report.md").read_text()
    for heading in ("Pretraining", "SFT", "Reward model", "PPO", "Talking to the final model"):
        assert heading in report
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


def test_unknown_data_preset_is_one_line(tmp_path):
    with pytest.raises(SystemExit, match="Unknown DATA preset 'martian'"):
        main(["--data", "martian", "--output-dir", str(tmp_path)])
