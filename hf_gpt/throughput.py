"""Throughput in every training log: tokens per second and model FLOPs utilisation (MFU), as nanoGPT's estimate_mfu.

MFU = model FLOPs per second / the device's peak. Model FLOPs per token of a forward pass are 2N + 4·L·d·T (N
parameters without position embeddings, L layers, width d, sequence length T: the matmuls with the weights, then
QKᵀ and the weighted sum of V); training costs three forward passes (backward = 2 × forward), 6N + 12·L·d·T, the
PaLM paper's appendix B formula. Recomputation (activation checkpointing) is work the model did not need: not counted.
"""

import time

import torch
from torch import nn

# Dense bf16/fp16 tensor-core peak in TFLOPS (datasheets, without sparsity), matched against the CUDA device name in
# this order. Override with `peak_tflops` for any other device; on a CPU MFU is logged only with that override.
PEAK_TFLOPS = (
    ("H200", 989.0), ("H100 PCIe", 756.0), ("H100", 989.0), ("A100", 312.0), ("L40S", 362.0), ("L4", 121.0),
    ("RTX 4090", 165.2), ("A10G", 70.0), ("T4", 65.0), ("V100", 125.0),
)

PEAK_HELP = "The device's peak TFLOPS for MFU (default: a table of common GPUs; on a CPU, no MFU without it)."


def device_name(device: torch.device | str) -> str:
    device = torch.device(device)
    return torch.cuda.get_device_name(device) if device.type == "cuda" else device.type


def peak_flops(device: torch.device | str, peak_tflops: float | None = None) -> float | None:
    """The device's peak FLOP/s: `peak_tflops` if given, else from PEAK_TFLOPS by name; None when unknown."""
    if peak_tflops:
        return peak_tflops * 1e12
    name = device_name(device)
    return next((tflops * 1e12 for key, tflops in PEAK_TFLOPS if key in name), None)


def count_parameters(model: nn.Module) -> int:
    """N: every parameter (a tied lm_head once) except learned position embeddings, which cost a lookup, no matmul."""
    positions = {id(p) for name, p in model.named_parameters() if "embed_positions" in name}
    return sum(p.numel() for p in model.parameters() if id(p) not in positions)


def forward_flops_per_token(model: nn.Module, seq_len: int) -> float:
    """2N + 4·L·d·T: one forward pass, per token, for sequences of T tokens."""
    config = model.config
    return 2 * count_parameters(model) + 4 * config.num_hidden_layers * config.hidden_size * seq_len


def seq2seq_step(model: nn.Module, source: tuple[int, int], target: tuple[int, int]) -> tuple[int, float]:
    """(tokens, training FLOPs) of an encoder-decoder step: source tokens run the encoder (2N_enc + 4·L_enc·d·L),
    target tokens the decoder and head (2N_dec + 4·L_dec·d·(T + L): self- and cross-attention), three passes each."""
    (rows, length), (_, target_length) = source[:2], target[:2]
    d, encoder = model.config.hidden_size, model.model.encoder
    embedding = encoder.embed_tokens.weight.numel()  # shared: a lookup for the encoder, the tied head's matmul
    n_encoder = count_parameters(encoder) - embedding
    n_decoder = count_parameters(model) - n_encoder
    per_source = 2 * n_encoder + 4 * encoder.config.num_hidden_layers * d * length
    per_target = 2 * n_decoder + 4 * model.config.num_hidden_layers * d * (target_length + length)
    return rows * (length + target_length), 3.0 * rows * (length * per_source + target_length * per_target)


def batch_shapes(inputs: dict) -> list[tuple[int, int]]:
    """(rows, length) of the sequences a training step runs: `input_ids` (LM, SFT, reward and DPO collators), or
    `prompt_ids` + `completion_ids` (GRPO/RLOO), or every `*input_ids` tensor."""
    if "input_ids" in inputs:
        return [tuple(inputs["input_ids"].shape[:2])]
    if "prompt_ids" in inputs and "completion_ids" in inputs:
        rows, prompt = inputs["prompt_ids"].shape[:2]
        return [(rows, prompt + inputs["completion_ids"].shape[1])]
    return [tuple(v.shape[:2]) for k, v in inputs.items() if k.endswith("input_ids") and torch.is_tensor(v)
            and v.dim() == 2]


class ThroughputMeter:
    """Tokens and model FLOPs of the training steps, over wall time that leaves out evaluation and checkpointing."""

    def __init__(self, device: torch.device | str, peak_tflops: float | None = None, processes: int = 1):
        self.device, self.peak, self.processes = device_name(device), peak_flops(device, peak_tflops), processes
        self.tokens = self.flops = self.seconds = 0.0  # whole run
        self.window = [0.0, 0.0, 0.0]  # tokens, flops, seconds since the last report
        self.mark: float | None = None

    def add(self, tokens: float, flops: float) -> None:
        if self.mark is None:
            self.mark = time.perf_counter()
        self.window[0] += tokens
        self.window[1] += flops

    def pause(self) -> None:
        """Close the running interval (before an evaluation or a save); the next `add` opens a new one."""
        if self.mark is not None:
            self.window[2] += time.perf_counter() - self.mark
            self.mark = None

    def report(self, prefix: str = "") -> dict[str, float]:
        """tokens_per_second (all processes) and mfu (per device) since the last report; {} before any step."""
        running = self.mark is not None
        self.pause()
        tokens, flops, seconds = self.window
        self.window = [0.0, 0.0, 0.0]
        if running:
            self.mark = time.perf_counter()
        self.tokens, self.flops, self.seconds = self.tokens + tokens, self.flops + flops, self.seconds + seconds
        return self._metrics(tokens, flops, seconds, prefix)

    def summary(self) -> dict[str, float | str]:
        """The whole run's tokens_per_second and mfu, the device and its peak (for training_summary.json and the
        model card)."""
        self.report()
        peak = {"peak_tflops": self.peak / 1e12} if self.peak else {}
        return {**self._metrics(self.tokens, self.flops, self.seconds, ""), "device": self.device, **peak}

    def _metrics(self, tokens: float, flops: float, seconds: float, prefix: str) -> dict[str, float]:
        if seconds <= 0 or tokens == 0:
            return {}
        metrics = {f"{prefix}tokens_per_second": round(tokens * self.processes / seconds, 1)}
        if self.peak:
            metrics[f"{prefix}mfu"] = round(flops / seconds / self.peak, 4)
        return metrics


class ThroughputMixin:
    """Put before a transformers/TRL Trainer class: counts every training step's tokens and model FLOPs and adds
    `tokens_per_second` and `mfu` to each log that carries a training loss (also TensorBoard's)."""

    def _meter(self) -> ThroughputMeter:
        if getattr(self, "_throughput", None) is None:
            self._throughput = ThroughputMeter(self.args.device, getattr(self.args, "peak_tflops", None),
                                               self.args.world_size)
        return self._throughput

    def compute_loss(self, model, inputs, *args, **kwargs):
        if model.training:
            counted = self.accelerator.unwrap_model(model)
            counted = getattr(counted, "get_base_model", lambda: counted)()  # PEFT: the wrapped model's config
            if getattr(counted.config, "is_encoder_decoder", False) and "labels" in inputs:
                tokens, flops = seq2seq_step(counted, inputs["input_ids"].shape, inputs["labels"].shape)
            else:
                shapes = batch_shapes(inputs)
                tokens = sum(rows * length for rows, length in shapes)
                flops = sum(rows * length * 3 * forward_flops_per_token(counted, length) for rows, length in shapes)
            self._meter().add(tokens, flops)
        return super().compute_loss(model, inputs, *args, **kwargs)

    def evaluate(self, *args, **kwargs):
        self._meter().pause()
        return super().evaluate(*args, **kwargs)

    def _save_checkpoint(self, *args, **kwargs):
        self._meter().pause()
        return super()._save_checkpoint(*args, **kwargs)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:
            logs.update(self._meter().report())
        super().log(logs, start_time)

    def throughput_summary(self) -> dict[str, float | str]:
        return self._meter().summary()


def with_throughput(trainer_cls: type) -> type:
    """`trainer_cls` (e.g. TRL's SFTTrainer) with ThroughputMixin (and the sharded-model save) in front, under the
    same name."""
    from .distributed import GatheredSaveMixin

    return type(trainer_cls.__name__, (ThroughputMixin, GatheredSaveMixin, trainer_cls), {"__module__": __name__})
