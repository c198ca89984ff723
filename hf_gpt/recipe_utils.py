"""What every recipe shares: YAML + flags parsing (TRL's TrlParser), presets by name, loading a stage's model,
resume, and one-line errors. `run_recipe(stage)` is the whole of `recipes/<stage>.py` and of `hf-gpt <stage>`."""

import importlib
import logging
import sys
from collections.abc import Callable
from importlib.resources import files
from pathlib import Path

from trl import TrlParser

logger = logging.getLogger(__name__)

# recipes/configs/*.yaml, shipped in the wheel as the package data `hf_gpt.recipe_configs` (see pyproject.toml).
CONFIG_PACKAGE = "hf_gpt.recipe_configs"
# stage → (module, config class, training function); every function takes (args, resume_from_checkpoint=...).
RECIPES = {
    "pretrain": ("hf_gpt.pretrain", "PretrainConfig", "pretrain"),
    "sft": ("hf_gpt.sft", "SFTRecipeConfig", "sft"),
    "reward": ("hf_gpt.reward", "RewardRecipeConfig", "train_reward_model"),
    "ppo": ("hf_gpt.ppo", "PPOConfig", "ppo"),
    "grpo": ("hf_gpt.trl_methods", "GRPORecipeConfig", "grpo"),
    "rloo": ("hf_gpt.trl_methods", "RLOORecipeConfig", "rloo"),
    "dpo": ("hf_gpt.trl_methods", "DPORecipeConfig", "dpo"),
    # The lecture's other two Transformers: BERT (masked LM, then classification) and the encoder-decoder.
    "mlm": ("hf_gpt.mlm", "MlmConfig", "pretrain_mlm"),
    "classify": ("hf_gpt.classify", "ClassifyConfig", "train_classifier"),
    "translate": ("hf_gpt.seq2seq", "TranslateConfig", "train_translation"),
}


def resolve_config(value: str, stage: str) -> str:
    """`--config` takes a YAML path or a preset name: `shakespeare` → recipes/configs/<stage>_shakespeare.yaml."""
    if Path(value).is_file():
        return value
    preset = files(CONFIG_PACKAGE) / f"{stage}_{value}.yaml"
    if preset.is_file():
        return str(preset)
    raise ValueError(f"Unknown {stage} config {value!r}: give a YAML file or one of the presets: "
                     f"{', '.join(preset_names(stage))}.")


def preset_names(stage: str) -> list[str]:
    return sorted(p.name.removeprefix(f"{stage}_").removesuffix(".yaml") for p in files(CONFIG_PACKAGE).iterdir()
                  if p.name.startswith(f"{stage}_") and p.name.endswith(".yaml"))


def command_name(stage: str) -> str:
    """How the user called the recipe: `python recipes/<stage>.py` or `hf-gpt <stage>`."""
    return f"python recipes/{stage}.py" if Path(sys.argv[0]).name == f"{stage}.py" else f"hf-gpt {stage}"


def recipe_help(config_class: type, stage: str) -> str:
    """What `--help` shows: the command, `--config` and its presets, the stage's own fields and the defaults it sets,
    then one pointer to the transformers/TRL arguments every recipe also takes (`--help-all` lists them)."""
    import dataclasses
    import textwrap

    base = next(c for c in config_class.__mro__[1:] if dataclasses.is_dataclass(c) and hasattr(c, "to_dict")
                and not c.__module__.startswith("hf_gpt"))  # TrainingArguments, or TRL's config of the stage
    inherited = {f.name: f for f in dataclasses.fields(base)}
    default = lambda f: f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    lines = [f"usage: {command_name(stage)} [--config PRESET_OR_YAML] [--FIELD VALUE ...]", "",
             *textwrap.wrap(" ".join((config_class.__doc__ or "").split()), 116), "",
             "  --config PRESET_OR_YAML",
             f"      a YAML file of fields, or a preset: {', '.join(preset_names(stage))} "
             f"(recipes/configs/{stage}_<preset>.yaml)", "", f"{stage}'s fields (and the defaults it sets):"]
    for f in dataclasses.fields(config_class):
        if f.name in inherited and default(f) == default(inherited[f.name]):
            continue
        lines.append(f"  --{f.name} (default {default(f)!r})")
        lines += textwrap.wrap(f.metadata.get("help", ""), 110, initial_indent="      ", subsequent_indent="      ")
    lines += ["", f"Every field of {base.__module__.split('.')[0]}'s {base.__name__} is a flag too (--learning_rate, "
              f"--max_steps, --save_steps, ...); `{command_name(stage)} --help-all` lists all of them."]
    return "\n".join(lines)


def parse_recipe_args(dataclass_types: tuple, stage: str, argv: list[str] | None = None) -> tuple:
    argv = list(sys.argv[1:] if argv is None else argv)
    if {"-h", "--help"} & set(argv):
        print(recipe_help(dataclass_types[0], stage))
        sys.exit(0)
    argv = ["--help" if a == "--help-all" else a for a in argv]
    if "--config" in argv and argv.index("--config") + 1 < len(argv):
        i = argv.index("--config") + 1
        argv[i] = resolve_config(argv[i], stage)
    # allow_abbrev=False: `--learning_rat` is an error, as an unknown YAML key is, not a silent `--learning_rate`.
    return RecipeParser(dataclass_types, prog=command_name(stage), allow_abbrev=False).parse_args_and_config(argv)


class RecipeParser(TrlParser):
    """TrlParser whose errors are one line: the 150-option usage is what `--help` is for."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (--help lists every option)\n")

    def parse_args_and_config(self, args=None, **kwargs):
        try:
            return super().parse_args_and_config(args, **kwargs)
        except ValueError as err:  # HfArgumentParser's way of saying "unknown option"
            if "not used by the HfArgumentParser" not in str(err):
                raise
            listed = str(err).split("[", 1)[1].strip("]").replace("'", "").split(", ")
            unknown = [a for a in listed if a.startswith("-")]
            self.error(f"unknown option {' '.join(unknown)}: check its spelling")


def take_push_request(args) -> dict | None:
    """`--push_to_hub --hub_model_id user/name`: check the token now (before any work) and push once at the end,
    with our model card, instead of Trainer's push at every save."""
    if not getattr(args, "push_to_hub", False):
        return None
    from .hub import check_token, use_timeouts

    use_timeouts()
    if not args.hub_model_id:
        raise ValueError("--push_to_hub needs --hub_model_id user/name.")
    check_token(args.hub_token)
    request = {"repo_id": args.hub_model_id, "private": bool(args.hub_private_repo), "revision": args.hub_revision,
               "token": args.hub_token}
    args.push_to_hub, args.hub_token = False, None  # the token must not reach training_args.bin or run.json
    return request


def push_if_requested(request: dict | None, folder: str) -> None:
    if request is not None:
        from .hub import push_folder

        print(f"Pushed {folder}: {push_folder(folder, **request)}")


def run_recipe(stage: str, argv: list[str] | None = None) -> None:
    """Parse the stage's config (preset, YAML, flags), train (resuming from the last checkpoint where the stage
    can), and push once at the end if asked; bad input ends with one line."""
    module, config_name, train_name = RECIPES[stage]

    def main() -> None:
        module_ = importlib.import_module(module)
        (args,) = parse_recipe_args((getattr(module_, config_name),), stage=stage, argv=argv)
        push = take_push_request(args)
        getattr(module_, train_name)(args, resume_from_checkpoint=args.resume_from_checkpoint or True)
        push_if_requested(push, args.output_dir)

    run_cli(main)


def run_cli(main: Callable[[], object], prefix: str = "error") -> None:
    """Run a command; bad input (a missing file, a wrong value), Ctrl-C and a full disk each end it with one clear
    line instead of a traceback."""
    from .run_folder import StopRun, disk_full, free_megabytes

    try:
        main()
    except StopRun as err:
        print(f"{prefix}: {err}", file=sys.stderr)
        sys.exit(err.exit_code)
    except KeyboardInterrupt:
        print(f"{prefix}: interrupted", file=sys.stderr)
        sys.exit(130)
    except (FileNotFoundError, ValueError) as err:
        sys.exit(f"{prefix}: {err}")
    except OSError as err:
        if disk_full(err):
            sys.exit(f"{prefix}: no space left on device writing {err.filename or '.'}: free ~"
                     f"{free_megabytes(Path(err.filename or '.').parent)} MB there.")
        raise
    finally:
        _close_process_group()


def _close_process_group() -> None:
    """Tear down the process group of `accelerate launch` before the interpreter exits: left to exit, a rank's
    communication threads may be destroyed while running and abort it (SIGABRT) after its work is done."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
