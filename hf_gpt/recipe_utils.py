"""What every recipe script shares: YAML + flags parsing (TRL's TrlParser), presets by name, one-line errors."""

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from trl import TrlParser

CONFIG_DIR = Path(__file__).resolve().parents[1] / "recipes" / "configs"


def resolve_config(value: str, stage: str, config_dir: Path = CONFIG_DIR) -> str:
    """`--config` takes a YAML path or a preset name: `shakespeare` → recipes/configs/<stage>_shakespeare.yaml."""
    if Path(value).is_file():
        return value
    candidate = config_dir / f"{stage}_{value}.yaml"
    if candidate.is_file():
        return str(candidate)
    presets = sorted(p.stem.removeprefix(f"{stage}_") for p in config_dir.glob(f"{stage}_*.yaml"))
    raise ValueError(f"Unknown {stage} config {value!r}: give a YAML file or one of the presets: {', '.join(presets)}.")


def parse_recipe_args(dataclass_types: tuple, stage: str, argv: list[str] | None = None) -> tuple:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--config" in argv and argv.index("--config") + 1 < len(argv):
        i = argv.index("--config") + 1
        argv[i] = resolve_config(argv[i], stage)
    return TrlParser(dataclass_types).parse_args_and_config(argv)


def take_push_request(args) -> dict | None:
    """`--push_to_hub --hub_model_id user/name`: check the token now (before any work) and push once at the end,
    with our model card, instead of Trainer's push at every save."""
    if not getattr(args, "push_to_hub", False):
        return None
    from .hub import check_token

    if not args.hub_model_id:
        raise ValueError("--push_to_hub needs --hub_model_id user/name.")
    check_token(args.hub_token)
    args.push_to_hub = False
    return {"repo_id": args.hub_model_id, "private": bool(args.hub_private_repo), "revision": args.hub_revision,
            "token": args.hub_token}


def push_if_requested(request: dict | None, folder: str) -> None:
    if request is not None:
        from .hub import push_folder

        print(f"Pushed {folder}: {push_folder(folder, **request)}")


def run_cli(main: Callable[[], object]) -> None:
    """Run a recipe; bad input (a missing file, a wrong value) ends with one clear line instead of a traceback."""
    try:
        main()
    except (FileNotFoundError, ValueError) as err:
        sys.exit(f"error: {err}")


def multi_process_on_cpu() -> bool:
    """True under torchrun / accelerate with several processes and no accelerator: Trainer then needs use_cpu=True,
    or every process silently trains alone (transformers only builds a gloo process group for use_cpu)."""
    import torch

    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.accelerator.is_available()


@dataclass
class RecipeFields:
    """Fields every post-pretraining recipe config shares, mixed in before the TRL/transformers config class:
    the starting model, the data, a system prompt, and defaults a CPU or single-GPU user can run unchanged."""

    model_name_or_path: str | None = field(default=None, metadata={"help": "The folder or Hub id to start from."})
    data_files: list[str] | None = field(default=None, metadata={"help": "Local .jsonl/.json/.parquet/.csv files."})
    dataset_name: str | None = field(default=None, metadata={"help": "A Hub dataset name (load_dataset)."})
    dataset_config: str | None = field(default=None, metadata={"help": "The Hub dataset's configuration name."})
    dataset_split: str = field(default="train", metadata={"help": "Split to use."})
    max_rows: int | None = field(default=None, metadata={"help": "Use only the first N rows (quick runs)."})
    system_prompt: str | None = field(default=None, metadata={"help": "System message added to every prompt (use "
                                                                      "the same one in SFT, RM and RL)."})
    report_to: str | list[str] = field(default="none", metadata={"help": "Loggers (tensorboard, none, ...)."})
    bf16: bool = field(default=False, metadata={"help": "bfloat16 mixed precision (GPUs); TRL's default is True."})
    gradient_checkpointing: bool = field(default=False, metadata={"help": "Recompute activations (TRL: True)."})
    ddp_find_unused_parameters: bool | None = field(default=False, metadata={"help": "All parameters get grads."})

    def __post_init__(self):
        self.use_cpu = self.use_cpu or multi_process_on_cpu()
        super().__post_init__()


def final_evaluation(trainer) -> dict:
    """Eval metrics at the end of training, reusing the last step's evaluation when there was one."""
    history = trainer.state.log_history
    last = history[-2] if len(history) > 1 else {}
    if "eval_loss" in last and last.get("step") == trainer.state.global_step:
        return last
    return trainer.evaluate()


def hold_out(dataset, args) -> tuple:
    """Split off `args.validation_fraction` for evaluation; with nothing held out, turn eval steps off."""
    if args.validation_fraction > 0 and len(dataset) > 1:
        split = dataset.train_test_split(test_size=args.validation_fraction, seed=args.seed)
        return split["train"], split["test"]
    args.eval_strategy = "no"
    return dataset, None
