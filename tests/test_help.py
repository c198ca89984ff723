"""Help a newcomer can read: a recipe's --help names the real command, puts --config and its presets first, then the
stage's own fields, and points to the rest; the CLI takes either flag spelling."""

import subprocess
import sys
from pathlib import Path

import pytest

from hf_gpt.cli import build_parser
from hf_gpt.recipe_utils import RECIPES, preset_names, run_recipe


@pytest.mark.parametrize("stage", sorted(RECIPES))
def test_recipe_help_is_short_and_starts_with_the_command_and_presets(stage, capsys):
    with pytest.raises(SystemExit) as stop:
        run_recipe(stage, ["--help"])
    assert stop.value.code == 0
    text = capsys.readouterr().out
    lines = text.splitlines()
    assert lines[0] == f"usage: hf-gpt {stage} [--config PRESET_OR_YAML] [--FIELD VALUE ...]"
    assert "--config PRESET_OR_YAML" in text and all(name in text for name in preset_names(stage))
    assert len(lines) < 120 and f"hf-gpt {stage} --help-all" in lines[-1]
    assert "--adam_beta2" not in text  # a TrainingArguments field left at its default: in --help-all only


def test_help_all_lists_every_field_and_the_recipe_script_names_itself(capsys):
    with pytest.raises(SystemExit):
        run_recipe("pretrain", ["--help-all"])
    assert "--adam_beta2" in capsys.readouterr().out
    script = Path(__file__).parents[1] / "recipes" / "sft.py"
    shown = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=120)
    assert shown.stdout.splitlines()[0].startswith("usage: python recipes/sft.py [--config")


def test_the_top_level_help_names_each_recipe_script(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(as recipes/pretrain.py)" in text and "{stage}" not in text


def test_the_cli_takes_either_flag_spelling():
    parse = build_parser().parse_args
    assert parse(["generate", "m", "p", "--max_new_tokens", "5", "--top_p", "0.9"]).max_new_tokens == 5
    assert parse(["generate", "m", "p", "--max-new-tokens", "5", "--top-p", "0.9"]).top_p == 0.9
    assert parse(["tokenizer", "train", "--files", "a.txt", "--vocab_size", "300", "--out", "t"]).vocab_size == 300


def test_readme_gives_a_time_for_every_preset():
    """README's table of preset times covers every preset the recipes ship but the GPU ones (a new preset needs its
    time measured: bench/preset_times.py), and README.ko names each too."""
    import re

    readme, korean = ((Path(__file__).parents[1] / name).read_text(encoding="utf-8")
                      for name in ("README.md", "README.ko.md"))
    table = readme.split("How long each preset takes")[1].split("\n\n")[1]
    timed = set(re.findall(r"`(\w+) --config ([\w-]+)`", table))
    shipped = {(stage, preset) for stage in RECIPES for preset in preset_names(stage)}
    assert timed == {(stage, preset) for stage, preset in shipped if preset not in ("gpt2-small", "korean-gpu")}
    assert all(preset in korean for _, preset in shipped)
