"""Progress a person can read: every stage logs `[stage] step i/n · spent · ~left · figures` (not raw dicts, no bar
where no terminal shows it), PPO too, and the demo numbers its stages."""

from hf_gpt.progress import clock, progress_line
from hf_gpt.recipe_utils import run_recipe


def test_the_time_left_is_the_pace_so_far_times_the_steps_left():
    line = progress_line("SFT", step=40, total=100, steps_timed=20, elapsed=30.0, logs={"loss": 1.23456, "epoch": 1})
    assert line == "[SFT] step 40/100 · 30s spent · ~1m30s left · loss 1.235"  # 1.5 s a step × 60 steps
    assert progress_line("PPO", 0, 10, 0, 0.0, {}) == "[PPO] step 0/10 · 0s spent · ~? left"
    assert [clock(s) for s in (0.4, 59, 61, 3600 + 125)] == ["0s", "59s", "1m01s", "1h02m"]


def test_a_stage_logs_readable_lines_in_a_log_file(tmp_path, capsys):
    text = tmp_path / "text.txt"
    text.write_text("The capital of Korea is Seoul. 3 plus 4 is 7. " * 200)
    run_recipe("pretrain", ["--config", "tiny", "--data_files", str(text), "--output_dir", str(tmp_path / "out"),
                            "--max_steps", "4", "--eval_steps", "2", "--logging_steps", "2", "--save_steps", "4"])
    out, err = capsys.readouterr()  # not a terminal: lines, no bar
    lines = [line for line in out.splitlines() if line.startswith("[pretraining] step ")]
    assert [line.split(" · ")[0] for line in lines if "· loss " in line] == ["[pretraining] step 2/4",
                                                                              "[pretraining] step 4/4"]
    assert all(" spent · ~" in line for line in lines)
    assert not [line for line in out.splitlines() if line.startswith("{'")]  # no raw dicts
    assert "/4 [" not in err  # no training bar written into a file (libraries still draw their own)
