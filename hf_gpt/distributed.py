"""Several processes: data parallelism and FSDP2 on CPU cores (gloo), and saving a sharded model as a plain folder.

Design choices:
- Accelerate gives FSDP only to accelerator processes; on CPU cores it quietly runs an FSDP config as plain data
  parallelism. torch's `fully_shard` works on a CPU mesh (gloo) as well, which lets the FSDP path be tested on any
  machine. `HF_GPT_FSDP_ON_CPU=1` asks for it: `allow_fsdp_on_cpu` then gives Accelerate's state the FSDP type when an
  FSDP plugin meets CPU processes. It never runs where an accelerator is present (the GPU path is Accelerate's own).
  Without that variable an FSDP or DeepSpeed launch on a machine without an accelerator is refused with one line.
- A model sharded by `fully_shard` has a generated class (`FSDPHfGptForCausalLM`); saved as it is, the folder would name
  torch's module in its `auto_map` and copy torch's files. `GatheredSaveMixin` saves under the model's own class, from a
  full state dict gathered on rank 0, whatever the checkpoints' state-dict type.
"""

import contextlib
import os

from transformers import TrainerCallback

FSDP_ON_CPU = "HF_GPT_FSDP_ON_CPU"


def multi_process_on_cpu() -> bool:
    """True under torchrun / accelerate with several processes and no accelerator: Trainer then needs use_cpu=True,
    or every process silently trains alone (transformers only builds a gloo process group for use_cpu)."""
    import torch
    from accelerate.utils import parse_flag_from_env

    if int(os.environ.get("WORLD_SIZE", "1")) == 1 or torch.accelerator.is_available():
        return False
    if os.environ.get("ACCELERATE_MIXED_PRECISION", "no") != "no":
        raise ValueError(f"accelerate launch asked for {os.environ['ACCELERATE_MIXED_PRECISION']} mixed precision on "
                         f"{os.environ['WORLD_SIZE']} processes, a GPU setup (recipes/accelerate/multi_gpu.yaml), and "
                         "this machine has no GPU: for CPU cores use --config_file recipes/accelerate/multi_cpu.yaml.")
    if parse_flag_from_env("ACCELERATE_USE_DEEPSPEED"):
        raise ValueError("accelerate launch asked for DeepSpeed, which needs GPUs, and this machine has none; for data "
                         "parallelism on CPU cores use --config_file recipes/accelerate/multi_cpu.yaml.")
    if parse_flag_from_env("ACCELERATE_USE_FSDP"):
        if not parse_flag_from_env(FSDP_ON_CPU):
            raise ValueError(f"accelerate launch asked for FSDP, which Accelerate runs on GPUs, and this machine has "
                             f"none: use --config_file recipes/accelerate/multi_cpu.yaml for data parallelism on CPU "
                             f"cores, or set {FSDP_ON_CPU}=1 to shard on CPU cores (gloo; for tests and learning).")
        allow_fsdp_on_cpu()
    return True


def allow_fsdp_on_cpu() -> None:
    """Let an FSDP plugin meet CPU processes: Accelerate's state (both of its singletons, which it re-reads from each
    other) takes the FSDP type instead of MULTI_CPU. Idempotent."""
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType

    if getattr(AcceleratorState.__init__, "fsdp_on_cpu", False):
        return
    original = AcceleratorState.__init__

    def init(self, *args, fsdp_plugin=None, **kwargs):
        original(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
            self.fsdp_plugin = fsdp_plugin
            if self._mixed_precision != "no":
                fsdp_plugin.set_mixed_precision(self._mixed_precision)
            self.distributed_type = PartialState._shared_state["distributed_type"] = DistributedType.FSDP

    init.fsdp_on_cpu = True
    AcceleratorState.__init__ = init


@contextlib.contextmanager
def own_class(model):
    """`model` under its own class for the time of a save: `fully_shard` swaps in a generated FSDP subclass, whose
    module (torch's) would otherwise end up in the saved config's auto_map and code files."""
    from transformers import PreTrainedModel

    generated = type(model)
    plain = next((c for c in generated.__mro__ if issubclass(c, PreTrainedModel) and "FSDP" not in c.__name__),
                 generated)
    model.__class__ = plain
    try:
        yield model
    finally:
        model.__class__ = generated


class ShardReport(TrainerCallback):
    """At the start of an FSDP run each rank says how much of the model it holds."""

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        from torch.distributed.tensor import DTensor

        params = list(model.parameters()) if model is not None else []
        if not any(isinstance(p, DTensor) for p in params):
            return
        from accelerate.state import PartialState

        local = sum(p.to_local().numel() if isinstance(p, DTensor) else p.numel() for p in params)
        kind = PartialState().distributed_type.value
        print(f"[rank {args.process_index}] {kind}: this rank holds {local:,} of the model's "
              f"{sum(p.numel() for p in params):,} parameters", flush=True)


class GatheredSaveMixin:
    """Put before a transformers/TRL Trainer class: the final `save_model` writes a plain model folder (full weights,
    the model's own auto_map and code files) on rank 0 under FSDP whatever the checkpoints' state-dict type; every rank
    takes part in the gather. Under FSDP each rank also reports the share of the model it holds when training starts."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.add_callback(ShardReport())

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        if not (self.is_fsdp_enabled and not _internal_call):
            return super().save_model(output_dir, _internal_call)
        state_dict = self.accelerator.get_state_dict(self.model)  # FSDP2: the full tensors, on rank 0
        self._save(output_dir or self.args.output_dir, state_dict=state_dict)

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        with own_class(self.accelerator.unwrap_model(self.model)):
            super()._save(output_dir, state_dict=state_dict)
