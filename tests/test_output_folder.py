"""The output folder's contract (hf_gpt.run_folder, README "Reliability"): nothing is deleted or written before every
input is checked; one run at a time; any model is finished; a resume is the same run or is refused naming the field;
a kill during the final save is finished by a rerun. Each case goes through the entry point users run (`run_recipe`,
as `recipes/<stage>.py` and `hf-gpt <stage>` do, or a real subprocess)."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from hf_gpt.data import write_jsonl
from hf_gpt.recipe_utils import run_recipe
from hf_gpt.run_folder import LOCK, RUN_RECORD, SUMMARY, write_json

ROWS = [{"prompt": f"Question {i}?", "completion": f"Answer {i}."} for i in range(8)]


@pytest.fixture(scope="module")
def text(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "text.txt"
    path.write_text("The capital of Korea is Seoul. 3 plus 4 is 7. " * 200)
    return path


def pretrain_argv(text: Path, out: Path, *extra: str) -> list[str]:
    return ["--config", "tiny", "--data_files", str(text), "--output_dir", str(out), "--max_steps", "4",
            "--save_steps", "2", "--eval_steps", "2", "--disable_tqdm", "true", *extra]


def contents(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def finished(tmp_path_factory, text) -> Path:
    """A finished 4-step pretraining run with checkpoints at steps 2 and 4."""
    out = tmp_path_factory.mktemp("finished") / "model"
    run_recipe("pretrain", pretrain_argv(text, out))
    return out


def copy_of(folder: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(folder, tmp_path / folder.name))


# ------------------------------------------------------------------ nothing before every input is checked


def test_overwrite_with_a_bad_input_deletes_nothing(finished, tmp_path, one_line, text):
    out = copy_of(finished, tmp_path)
    before = contents(out)
    line = one_line("pretrain", pretrain_argv(text, out, "--overwrite_output_dir", "true", "--data_files",
                                              str(tmp_path / "typo.txt")))
    assert "Data file not found" in line
    assert contents(out) == before  # checkpoints, summary and run record untouched


def test_rerun_into_a_finished_folder_changes_nothing(finished, tmp_path, one_line, text):
    out = copy_of(finished, tmp_path)
    before = contents(out)
    line = one_line("pretrain", pretrain_argv(text, out))
    assert line == (f"error: {out} holds a finished pretraining model: pass --overwrite_output_dir true to train "
                    "again into it, --resume_from_checkpoint <checkpoint> to continue from one, or another "
                    "--output_dir.")
    assert contents(out) == before
    run_recipe("pretrain", pretrain_argv(text, out, "--overwrite_output_dir", "true", "--max_steps", "2"))
    assert json.loads((out / SUMMARY).read_text())["steps"] == 2  # told to: trained afresh
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2"]  # the old run's are gone


@pytest.mark.parametrize("what", ["value_model", "adapter"])
def test_any_folder_holding_a_model_is_finished(finished, tmp_path, one_line, text, what):
    """A PPO run's value_model/, an SFT adapter, any model folder without our run record: never trained over."""
    out = tmp_path / what
    out.mkdir()
    if what == "value_model":
        for name in ("config.json", "model.safetensors"):
            (out / name).write_bytes((finished / name).read_bytes())
    else:
        (out / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(finished)}))
    before = contents(out)
    line = one_line("pretrain", pretrain_argv(text, out))
    assert "holds a model that this run did not start" in line and "--overwrite_output_dir true" in line
    assert contents(out) == before


def test_a_run_that_fails_before_training_leaves_no_folder(tmp_path, one_line, text):
    """Neither its output folder nor the folders made for it; a folder another run has put something in since stays."""
    out = tmp_path / "runs" / "new" / "model"
    one_line("sft", ["--model_name_or_path", str(tmp_path / "nowhere"), "--data_files", str(text),
                     "--output_dir", str(out)])
    assert not (tmp_path / "runs").exists()
    (tmp_path / "runs" / "other").mkdir(parents=True)
    one_line("sft", ["--model_name_or_path", str(tmp_path / "nowhere"), "--data_files", str(text),
                     "--output_dir", str(out)])
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["other"]


# ------------------------------------------------------------------ one run at a time


def test_a_second_run_into_a_busy_folder_names_the_holder(tmp_path, one_line, text):
    from hf_gpt.pretrain import PretrainConfig
    from hf_gpt.run_folder import RunFolder

    out = tmp_path / "busy"
    with RunFolder(PretrainConfig(output_dir=str(out), data_files=[str(text)]), "pretraining"):
        line = one_line("pretrain", pretrain_argv(text, out))
    assert line.startswith(f"error: {out} is in use by another run (PID {os.getpid()} on ")
    run_recipe("pretrain", pretrain_argv(text, out, "--max_steps", "2"))  # released: the folder is usable again


@pytest.mark.slow
def test_a_killed_runs_lock_is_taken_over(tmp_path, text):
    """A run killed with SIGKILL holds no lock: the next run into the folder starts (and resumes)."""
    out = tmp_path / "killed"
    hold = ("import sys, time; from hf_gpt.pretrain import PretrainConfig; from hf_gpt.run_folder import RunFolder\n"
            f"with RunFolder(PretrainConfig(output_dir={str(out)!r}), 'pretraining'):\n"
            "    print('locked', flush=True); time.sleep(600)\n")
    holder = subprocess.Popen([sys.executable, "-c", hold], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert (out / LOCK).read_text().startswith(f"{holder.pid} on ")
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    run_recipe("pretrain", pretrain_argv(text, out, "--max_steps", "2"))
    assert json.loads((out / SUMMARY).read_text())["steps"] == 2


# ------------------------------------------------------------------ a resume is the same run


def unfinished(finished: Path, tmp_path: Path) -> Path:
    """The finished run as a kill after checkpoint-2 would leave it."""
    out = copy_of(finished, tmp_path)
    import shutil

    shutil.rmtree(out / "checkpoint-4")
    for path in out.iterdir():
        if path.is_file() and path.name not in (RUN_RECORD, LOCK):
            path.unlink()
    return out


@pytest.mark.parametrize("flags, field", [
    (["--learning_rate", "0.01"], "learning_rate"),
    (["--lr_scheduler_type", "constant"], "lr_scheduler_type"),
    (["--per_device_train_batch_size", "4"], "per_device_train_batch_size"),
    (["--seed", "1"], "seed"),
    (["--max_steps", "8"], "max_steps"),
    (["--n_embd", "48"], "n_embd"),
])
def test_a_resume_with_another_setting_is_refused_naming_it(finished, tmp_path, one_line, text, flags, field):
    out = unfinished(finished, tmp_path)
    before = contents(out)
    line = one_line("pretrain", pretrain_argv(text, out, *flags))
    assert line.startswith(f"error: {out} holds checkpoints of another run ({field}: "), line
    assert "--overwrite_output_dir true" in line
    assert contents(out) == before


def test_a_resume_on_changed_data_is_refused(finished, tmp_path, one_line, text):
    """The same --data_files path with new content is another run: its BPE would give token ids new meanings."""
    out = unfinished(finished, tmp_path)
    changed = tmp_path / text.name
    changed.write_text(text.read_text().replace("Seoul", "Busan"))
    line = one_line("pretrain", pretrain_argv(changed, out))
    assert "holds checkpoints of another run (data_files: [" in line and "sha256" in line


def test_the_python_api_resumes_by_default_and_never_trains_over_checkpoints(finished, tmp_path, text):
    """`pretrain(args)` from Python resumes as the recipe does; asked not to resume, it refuses instead of starting a
    second run among the first one's checkpoints."""
    from hf_gpt.pretrain import PretrainConfig, pretrain
    from hf_gpt.recipe_utils import parse_recipe_args

    out = unfinished(finished, tmp_path)
    before = contents(out)
    args = lambda: parse_recipe_args((PretrainConfig,), "pretrain", pretrain_argv(text, out))[0]
    with pytest.raises(ValueError, match="holds checkpoints of an unfinished run .the last: checkpoint-2.: resume"):
        pretrain(args(), resume_from_checkpoint=False)
    assert contents(out) == before
    kept = (out / "checkpoint-2" / "trainer_state.json").stat().st_mtime_ns
    pretrain(args())
    assert (out / "checkpoint-2" / "trainer_state.json").stat().st_mtime_ns == kept  # resumed, not trained again
    assert json.loads((out / SUMMARY).read_text())["steps"] == 4


def test_settings_that_do_not_change_the_weights_may_change(finished, tmp_path, text, monkeypatch):
    """Logging, evaluation and saving cadence may change on resume; the run's tokenizer is loaded, never retrained."""
    import hf_gpt.pretrain

    out = unfinished(finished, tmp_path)
    monkeypatch.setattr(hf_gpt.pretrain, "train_tokenizer", lambda *a, **k: pytest.fail("tokenizer retrained"))
    run_recipe("pretrain", pretrain_argv(text, out, "--logging_steps", "1", "--eval_steps", "4", "--save_steps", "4"))
    summary = json.loads((out / SUMMARY).read_text())
    assert summary["steps"] == 4
    state = json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["global_step"] == 4
    assert (out / "tokenizer.json").read_bytes() == (finished / "tokenizer.json").read_bytes()


def test_a_kill_during_the_final_save_is_finished_by_a_rerun(finished, tmp_path, text):
    """Killed after its last checkpoint, while writing the final model: the rerun writes it, with the same steps, the
    last checkpoint's weights and no extra checkpoint."""
    out = copy_of(finished, tmp_path)
    for path in out.iterdir():
        if path.is_file() and path.name not in (RUN_RECORD, LOCK):
            path.unlink()
    (out / "config.json").write_text("{")  # the final save was under way
    run_recipe("pretrain", pretrain_argv(text, out))
    assert json.loads((out / SUMMARY).read_text())["steps"] == 4
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    final, last = load_file(out / "model.safetensors"), load_file(out / "checkpoint-4" / "model.safetensors")
    assert final.keys() == last.keys() and all((final[k] == last[k]).all() for k in final)
    assert final.keys() == load_file(finished / "model.safetensors").keys()


# ------------------------------------------------------------------ state files


def test_state_files_are_written_atomically(tmp_path, monkeypatch):
    path = tmp_path / "state.json"
    write_json(path, {"step": 1})

    def broken_dump(value, f, **kwargs):
        f.write('{"step": ')
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(json, "dump", broken_dump)
    with pytest.raises(OSError):
        write_json(path, {"step": 2})
    assert json.loads(path.read_text()) == {"step": 1}  # the old file, whole
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]  # no temporary left behind


# ------------------------------------------------------------------ other stages, other entry points


def test_sft_and_reward_use_the_same_owner(tmp_path, one_line, tokenizer, model_folder):
    base = model_folder(tmp_path, tokenizer)
    data = write_jsonl(tmp_path / "rows.jsonl", ROWS)
    argv = ["--model_name_or_path", str(base), "--data_files", data, "--output_dir", str(tmp_path / "sft"),
            "--max_steps", "2", "--save_steps", "1", "--disable_tqdm", "true"]
    run_recipe("sft", argv)
    assert "holds a finished SFT model" in one_line("sft", argv)
    (tmp_path / "sft" / SUMMARY).unlink()
    assert "(learning_rate: 0.0005 there, 0.001 now)" in one_line("sft", [*argv, "--learning_rate", "0.001"])
    line = one_line("reward", ["--model_name_or_path", str(base), "--data_files", data, "--output_dir",
                               str(tmp_path / "sft" / "checkpoint-2")])
    assert "holds a model that this run did not start" in line


def as_from_a_terminal() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGINT])


@pytest.mark.slow
def test_sigint_stops_with_one_line_and_the_rerun_resumes(tmp_path, text):
    out = tmp_path / "interrupted"
    command = [sys.executable, "-m", "hf_gpt.cli", "pretrain", *pretrain_argv(text, out, "--max_steps", "400",
                                                                                 "--save_steps", "5")]
    # As from a terminal, where Ctrl-C reaches a process whose SIGINT is at its default: a suite started in the
    # background (`make test &`, nohup) runs with SIGINT ignored, which every child inherits.
    run = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                           preexec_fn=as_from_a_terminal)
    deadline = time.time() + 240
    while not list(out.glob("checkpoint-*/trainer_state.json")) and time.time() < deadline:
        time.sleep(0.2)
    run.send_signal(signal.SIGINT)
    _, err = run.communicate(timeout=120)
    assert run.returncode == 130, err[-2000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: interrupted at step ") and "rerun the same command to resume from checkpoint-" \
        in last
    assert "Traceback" not in err


def test_every_path_field_is_recorded_by_content(tmp_path):
    """A field naming a file or model (any `*_path`, also one a new stage adds) is an input: the same content under
    another path is the same run, other content under the same path is not."""
    from dataclasses import dataclass

    from hf_gpt.run_folder import first_difference, run_record

    @dataclass
    class DistillArgs:
        teacher_path: str
        learning_rate: float = 1e-3

    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "model.safetensors").write_bytes(b"teacher one")
    copy = Path(shutil.copytree(tmp_path / "a", tmp_path / "b"))
    record = run_record(DistillArgs(str(tmp_path / "a")), "distill", 1)
    assert first_difference(record, run_record(DistillArgs(str(copy)), "distill", 1)) is None
    (copy / "model.safetensors").write_bytes(b"teacher two")
    assert first_difference(record, run_record(DistillArgs(str(copy)), "distill", 1))[0] == "teacher_path"
