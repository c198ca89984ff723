"""What every recipe shares: YAML + flags parsing (TRL's TrlParser), presets by name, loading a stage's model,
resume, and one-line errors. `run_recipe(stage)` is the whole of `recipes/<stage>.py` and of `hf-gpt <stage>`."""

import importlib
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path

from trl import TrlParser

from .distributed import multi_process_on_cpu
from .throughput import PEAK_HELP

logger = logging.getLogger(__name__)

# recipes/configs/*.yaml, shipped in the wheel as the package data `hf_gpt.recipe_configs` (see pyproject.toml).
CONFIG_PACKAGE = "hf_gpt.recipe_configs"
# stage → (module, config class, training function); every function takes (args, resume_from_checkpoint=...).
RECIPES = {
    "pretrain": ("hf_gpt.pretrain", "PretrainConfig", "pretrain"),
    "sft": ("hf_gpt.sft", "SFTRecipeConfig", "sft"),
    "reward": ("hf_gpt.reward", "RewardRecipeConfig", "train_reward_model"),
    "ppo": ("hf_gpt.ppo", "PPOConfig", "ppo"),
    "grpo": ("hf_gpt.alternatives", "GRPORecipeConfig", "grpo"),
    "rloo": ("hf_gpt.alternatives", "RLOORecipeConfig", "rloo"),
    "dpo": ("hf_gpt.alternatives", "DPORecipeConfig", "dpo"),
    # The lecture's other two Transformers: BERT (masked LM, then classification) and the encoder-decoder.
    "mlm": ("hf_gpt.mlm", "MlmConfig", "pretrain_mlm"),
    "classify": ("hf_gpt.mlm", "ClassifyConfig", "train_classifier"),
    "translate": ("hf_gpt.seq2seq", "TranslateConfig", "train_translation"),
}


def resolve_config(value: str, stage: str) -> str:
    """`--config` takes a YAML path or a preset name: `shakespeare` → recipes/configs/<stage>_shakespeare.yaml."""
    if Path(value).is_file():
        return value
    presets = {p.name: p for p in files(CONFIG_PACKAGE).iterdir() if p.name.endswith(".yaml")}
    if f"{stage}_{value}.yaml" in presets:
        return str(presets[f"{stage}_{value}.yaml"])
    names = sorted(n.removeprefix(f"{stage}_").removesuffix(".yaml") for n in presets if n.startswith(f"{stage}_"))
    raise ValueError(f"Unknown {stage} config {value!r}: give a YAML file or one of the presets: {', '.join(names)}.")


def parse_recipe_args(dataclass_types: tuple, stage: str, argv: list[str] | None = None) -> tuple:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--config" in argv and argv.index("--config") + 1 < len(argv):
        i = argv.index("--config") + 1
        argv[i] = resolve_config(argv[i], stage)
    # allow_abbrev=False: `--learning_rat` is an error, as an unknown YAML key is, not a silent `--learning_rate`.
    return RecipeParser(dataclass_types, allow_abbrev=False).parse_args_and_config(argv)


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


def load_stage(args, model_class, what: str, **kwargs) -> tuple:
    """The tokenizer and model a stage starts from (`args.model_name_or_path`): one check, one way to load."""
    from .loading import load_model_and_tokenizer

    if not args.model_name_or_path:
        raise ValueError(f"model_name_or_path is required: {what}.")
    return load_model_and_tokenizer(model_class, args.model_name_or_path, "the model", args.trust_remote_code,
                                    **kwargs)


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


@dataclass
class RecipeFields:
    """Fields every post-pretraining recipe config shares, mixed in before the TRL/transformers config class:
    the starting model, the data, a system prompt, and defaults a CPU or single-GPU user can run unchanged."""

    model_name_or_path: str | None = field(default=None, metadata={"help": "The folder or Hub id to start from."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Run modelling code from the model folder or "
                                                                     "repo (hf_gpt models never need it)."})
    data_files: list[str] | None = field(default=None, metadata={"help": "Local .jsonl/.json/.parquet/.csv files."})
    dataset_name: str | None = field(default=None, metadata={"help": "A Hub dataset name (load_dataset)."})
    dataset_config: str | None = field(default=None, metadata={"help": "The Hub dataset's configuration name."})
    dataset_split: str = field(default="train", metadata={"help": "Split to use."})
    max_rows: int | None = field(default=None, metadata={"help": "Use only the first N rows (quick runs)."})
    system_prompt: str | None = field(default=None, metadata={"help": "System message added to every prompt (use "
                                                                      "the same one in SFT, RM and RL)."})
    overwrite_output_dir: bool = field(default=False, metadata={"help": "Train afresh into an output_dir that holds "
                                                                        "a finished model or checkpoints."})
    # `None | str | list[str]` as in TrainingArguments: HfArgumentParser turns `str | list[str]` into [None].
    report_to: None | str | list[str] = field(default="none", metadata={"help": "Loggers (tensorboard, none, ...)."})
    bf16: bool = field(default=False, metadata={"help": "bfloat16 mixed precision (GPUs); TRL's default is True."})
    gradient_checkpointing: bool | None = field(default=None, metadata={"help": "Deprecated name of "
                                                                              "activation_checkpointing."})
    activation_checkpointing: bool | None = field(default=None, metadata={"help": "Recompute activations in the "
                                                                                   "backward pass (TRL: True)."})
    ddp_find_unused_parameters: bool | None = field(default=False, metadata={"help": "All parameters get grads."})
    peak_tflops: float | None = field(default=None, metadata={"help": PEAK_HELP})

    def __post_init__(self):
        self.use_cpu = self.use_cpu or multi_process_on_cpu()
        check_max_steps(self.max_steps)
        super().__post_init__()


def check_max_steps(max_steps: int) -> None:
    if max_steps != -1 and max_steps < 1:
        raise ValueError(f"max_steps must be a positive number of steps, or -1 to train num_train_epochs epochs; "
                         f"got {max_steps}.")


def final_evaluation(trainer) -> dict:
    """Eval metrics at the end of training, reusing the last step's evaluation when there was one (and the model is
    still the last step's, not the best checkpoint reloaded)."""
    history = trainer.state.log_history
    last = history[-2] if len(history) > 1 else {}
    best_loaded = trainer.args.load_best_model_at_end and trainer.state.best_model_checkpoint
    if "eval_loss" in last and last.get("step") == trainer.state.global_step and not best_loaded:
        return last
    return trainer.evaluate()


def hold_out(dataset, args) -> tuple:
    """Split off `args.validation_fraction` for evaluation; with nothing held out, turn eval steps off."""
    if args.validation_fraction > 0 and len(dataset) > 1:
        split = dataset.train_test_split(test_size=args.validation_fraction, seed=args.seed)
        return split["train"], split["test"]
    args.eval_strategy = "no"
    return dataset, None
