"""The one skeleton every training stage follows, and the config bases every stage's config inherits.

    prepare the output folder → load → data → train → finish (save, summary, card)

`Stage.run` owns the order: `RunFolder` checks the folder and decides where the run starts (nothing written), the
stage's `build` loads its models and data and returns a trainer (still nothing written), `RunFolder.begin` makes the
first write, training resumes from the decided checkpoint, and `Stage.finish` is the same for every stage. A new
stage writes only its own parts (`build`, and `evaluate`/`write_files` if it has more to say): docs/adding_a_stage.md.
"""

import logging
from dataclasses import dataclass, field

from transformers import set_seed

from .distributed import multi_process_on_cpu
from .hub import write_summary
from .muon import MUON_HELP, use_muon
from .progress import use_readable_progress
from .run_folder import RunFolder
from .throughput import PEAK_HELP

logger = logging.getLogger(__name__)

# ---------------------------------------------------------------- configs


@dataclass
class StageConfig:
    """Fields every stage's config has, mixed in before its transformers/TRL arguments class: its data files, the
    output folder's overwrite switch, loggers, precision and the MFU peak; and the checks every stage makes."""

    data_files: list[str] | None = field(default=None, metadata={"help": "Local .jsonl/.json/.parquet/.csv files."})
    overwrite_output_dir: bool = field(default=False, metadata={"help": "Train afresh into an output_dir that holds "
                                                                        "a finished model or checkpoints."})
    # `None | str | list[str]` as in TrainingArguments: HfArgumentParser turns `str | list[str]` into [None].
    report_to: None | str | list[str] = field(default="none", metadata={"help": "Loggers (tensorboard, none, ...)."})
    bf16: bool = field(default=False, metadata={"help": "bfloat16 mixed precision (GPUs); TRL's default is True."})
    ddp_find_unused_parameters: bool | None = field(default=False, metadata={"help": "All parameters get grads."})
    peak_tflops: float | None = field(default=None, metadata={"help": PEAK_HELP})
    muon: bool = field(default=False, metadata={"help": MUON_HELP})
    muon_learning_rate: float = field(default=0.02, metadata={"help": "Muon's learning rate (with --muon true)."})

    def __post_init__(self):
        self.use_cpu = self.use_cpu or multi_process_on_cpu()
        check_max_steps(self.max_steps)
        check_muon(self)
        check_precision_on_this_machine(self)
        import torch

        if not torch.accelerator.is_available():  # pinned memory speeds host→GPU copies; without a GPU torch warns
            self.dataloader_pin_memory = False
        super().__post_init__()


@dataclass
class StartingModelConfig(StageConfig):
    """A stage that starts from a saved model (or may) and reads a Hub dataset by name."""

    model_name_or_path: str | None = field(default=None, metadata={"help": "The folder or Hub id to start from."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Run modelling code from the model folder or "
                                                                     "repo (hf_gpt models never need it)."})
    dataset_name: str | None = field(default=None, metadata={"help": "A Hub dataset name (load_dataset)."})
    dataset_config: str | None = field(default=None, metadata={"help": "The Hub dataset's configuration name."})


@dataclass
class RowsConfig(StartingModelConfig):
    """A stage that fine-tunes a saved model on rows (`data.load_rows`)."""

    dataset_split: str = field(default="train", metadata={"help": "Split to use."})
    max_rows: int | None = field(default=None, metadata={"help": "Use only the first N rows (quick runs)."})
    gradient_checkpointing: bool | None = field(default=None, metadata={"help": "Deprecated name of "
                                                                              "activation_checkpointing."})
    activation_checkpointing: bool | None = field(default=None, metadata={"help": "Recompute activations in the "
                                                                                   "backward pass (TRL: True)."})


@dataclass
class ChatConfig(RowsConfig):
    """A stage that trains a chat model: its prompts get the same system prompt in SFT, reward modelling and RL."""

    system_prompt: str | None = field(default=None, metadata={"help": "System message added to every prompt (use "
                                                                      "the same one in SFT, RM and RL)."})


@dataclass
class ModelShapeConfig:
    """A stage that may build a fresh model (pretraining, masked LM, translation): its tokenizer and shape."""

    tokenizer_name_or_path: str | None = field(
        default=None, metadata={"help": "A trained tokenizer; if unset, a byte-level BPE is trained on the data."})
    vocab_size: int = field(default=4096, metadata={"help": "BPE vocabulary size when training a tokenizer."})
    n_layer: int = field(default=4, metadata={"help": "Decoder blocks."})
    n_head: int = field(default=4, metadata={"help": "Attention heads."})
    n_embd: int = field(default=256, metadata={"help": "Model width d_model."})
    max_position_embeddings: int | None = field(default=None, metadata={"help": "Context limit (default block_size)."})
    position_embedding_type: str = field(default="sinusoidal", metadata={"help": "sinusoidal, learned or rope."})
    sinusoidal_base: float = field(default=10000.0, metadata={"help": "n in sin(k / n^(2i/d))."})
    norm_position: str = field(default="pre", metadata={"help": "pre (GPT-2) or post (original Transformer)."})
    hidden_act: str = field(default="gelu", metadata={"help": "Feed-forward activation: gelu, relu, ..."})
    dropout: float = field(default=0.0, metadata={"help": "Embedding, attention and residual dropout."})
    tie_word_embeddings: bool = field(default=True, metadata={"help": "The LM head is the token embedding (GPT-2); "
                                                                      "false: a head of its own."})


def new_model_config(args: ModelShapeConfig, tokenizer, **extra):
    """The HfGptConfig of a fresh model of the shape `args` gives, sized to the tokenizer and knowing its special
    tokens."""
    from .configuration_hf_gpt import HfGptConfig
    from .tokenizer import special_token_ids

    return HfGptConfig(
        vocab_size=len(tokenizer), n_layer=args.n_layer, n_head=args.n_head, n_embd=args.n_embd,
        max_position_embeddings=args.max_position_embeddings, position_embedding_type=args.position_embedding_type,
        sinusoidal_base=args.sinusoidal_base, norm_position=args.norm_position, hidden_act=args.hidden_act,
        embedding_dropout=args.dropout, attention_dropout=args.dropout, hidden_dropout=args.dropout,
        tie_word_embeddings=args.tie_word_embeddings, **special_token_ids(tokenizer), **extra)


@dataclass
class LoraConfigFields:
    """LoRA settings, turned into a peft `LoraConfig` by TRL's own `get_peft_config`."""

    use_peft: bool = field(default=False, metadata={"help": "Train LoRA adapters instead of all weights."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA scaling alpha."})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout."})
    lora_target_modules: str = field(default="all-linear", metadata={"help": "Modules that get adapters."})


def peft_config(args: LoraConfigFields):
    """The `LoraConfig` for the LoRA fields (None without `use_peft`), through TRL's ModelConfig → get_peft_config."""
    from trl import ModelConfig, get_peft_config

    return get_peft_config(ModelConfig(use_peft=args.use_peft, lora_r=args.lora_r, lora_alpha=args.lora_alpha,
                                       lora_dropout=args.lora_dropout, lora_target_modules=args.lora_target_modules))


def check_precision_on_this_machine(args) -> None:
    """Mixed precision asks for a GPU; on a machine without one say so, and what to run instead (transformers would
    say "assign use_cpu")."""
    import torch

    flag = "bf16" if args.bf16 else "fp16" if args.fp16 else None
    if flag and not args.use_cpu and not torch.accelerator.is_available():
        raise ValueError(f"--{flag} true is mixed precision for a GPU, and this machine has none: leave it out on a "
                         f"CPU (or add --use_cpu true to run {flag} on the CPU anyway, slowly). The gpt2-small and "
                         "korean-gpu presets are GPU runs; on a CPU start with --config tiny or shakespeare.")


def check_max_steps(max_steps: int) -> None:
    if max_steps != -1 and max_steps < 1:
        raise ValueError(f"max_steps must be a positive number of steps, or -1 to train num_train_epochs epochs; "
                         f"got {max_steps}.")


# ---------------------------------------------------------------- the skeleton


class Stage:
    """One training stage. Subclasses set `name`, `title` and `build`; `evaluate` and `write_files` where they have
    something to add."""

    name: str  # the summary's and the model card's kind: base, sft, reward, ppo, ...
    title: str  # how messages name the stage: "SFT", "PPO", "pretraining", ...
    state_file = "trainer_state.json"  # the file a complete checkpoint holds, written last

    def __init__(self, args):
        self.args = args

    def run(self, resume_from_checkpoint: str | bool = True):
        """Check the folder, build, train (resuming from the last complete checkpoint of this same run), finish."""
        args = self.args
        with RunFolder(args, self.title, resume_from_checkpoint, self.state_file) as run:
            set_seed(args.seed)  # before any model is built: its initial weights must not depend on luck
            trainer = self.build(run.checkpoint)
            use_muon(trainer)
            use_readable_progress(trainer, self.title)
            run.begin()
            run.train(trainer)
            self.finish(trainer)
        return trainer

    def finish(self, trainer) -> dict:
        """Evaluate, save the model, then the stage's own files and `training_summary.json` (last: it marks the
        folder finished); every rank calls it."""
        from accelerate import PartialState

        args = self.args
        metrics = self.evaluate(trainer)
        trainer.save_model(args.output_dir)  # every rank: a sharded model is gathered first
        if PartialState().is_main_process:
            self.write_files(trainer, metrics)
            write_summary(args.output_dir, self.name, metrics, data=self.data_source(),
                          base_model=getattr(args, "model_name_or_path", None), steps=self.steps(trainer),
                          throughput=trainer.throughput_summary())
        return metrics

    def build(self, checkpoint: str | None):
        """Load and check the models and data, and return the trainer; write nothing. `checkpoint` is where the run
        resumes (None for a fresh run): a stage that trained its own tokenizer reloads it from there."""
        raise NotImplementedError

    def evaluate(self, trainer) -> dict:
        """The summary's metrics, after training, on every rank."""
        return {}

    def write_files(self, trainer, metrics: dict) -> None:
        """The stage's own files next to the model (curves, samples), on the main process."""

    def data_source(self):
        return self.args.data_files or getattr(self.args, "dataset_name", None)

    def steps(self, trainer) -> int:
        return trainer.state.global_step


# ---------------------------------------------------------------- what several stages' `build` and `evaluate` share


def load_starting_model(args: StartingModelConfig, model_class, what: str, **kwargs) -> tuple:
    """The tokenizer and model a stage starts from (`args.model_name_or_path`): one check, one way to load."""
    from .loading import load_model_and_tokenizer

    if not args.model_name_or_path:
        raise ValueError(f"model_name_or_path is required: {what}.")
    return load_model_and_tokenizer(model_class, args.model_name_or_path, "the model", args.trust_remote_code,
                                    **kwargs)


def check_muon(args) -> None:
    """Muon's update needs each whole matrix; FSDP holds a slice of it on each process."""
    if not args.muon:
        return
    from accelerate.utils import parse_flag_from_env

    if args.fsdp or parse_flag_from_env("ACCELERATE_USE_FSDP"):
        raise ValueError("--muon true cannot run under FSDP: Muon orthogonalises each whole weight matrix and FSDP "
                         "gives each process a slice of it. Launch with data parallelism (recipes/accelerate/"
                         "multi_gpu.yaml or multi_cpu.yaml) or leave --muon out.")
    if args.muon_learning_rate <= 0:
        raise ValueError(f"--muon_learning_rate must be > 0, got {args.muon_learning_rate}.")


def fit_max_length(args, model) -> int:
    """`args.max_length`, at most the model's context (TRL's default, 1024, may be longer); unset means the context."""
    context = model.config.max_position_embeddings
    args.max_length = min(args.max_length or context, context)
    return args.max_length


def hold_out(dataset, args) -> tuple:
    """Split off `args.validation_fraction` for evaluation; with nothing held out, turn eval steps off."""
    if args.validation_fraction > 0 and len(dataset) > 1:
        split = dataset.train_test_split(test_size=args.validation_fraction, seed=args.seed)
        return split["train"], split["test"]
    args.eval_strategy = "no"
    return dataset, None


def final_evaluation(trainer) -> dict:
    """Eval metrics at the end of training, reusing the last step's evaluation when there was one (and the model is
    still the last step's, not the best checkpoint reloaded)."""
    history = trainer.state.log_history
    last = history[-2] if len(history) > 1 else {}
    best_loaded = trainer.args.load_best_model_at_end and trainer.state.best_model_checkpoint
    if "eval_loss" in last and last.get("step") == trainer.state.global_step and not best_loaded:
        return last
    return trainer.evaluate()
