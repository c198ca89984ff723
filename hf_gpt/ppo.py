"""Stage 3b, PPO with a KL penalty to the SFT model, in TRL 1.x's conventions (TRL removed its PPOTrainer in 1.13).

Four roles: the policy (from SFT, trained), the reference (frozen SFT), the reward (a frozen reward model and/or
reward functions `f(prompts, completions) -> list[float]`, weighted) and the value model (from the RM, trained).
Prompts are text or chat messages, as in TRL 1.x trainers; nothing is pre-tokenised by the user.

One PPO step: rollout → score → KL-shaped rewards → GAE → num_ppo_epochs of clipped updates over minibatches.
The math lives in `ppo_core` as small tested functions; this file wires models, data, Accelerate and logging.
"""

import contextlib
import dataclasses
import json
import math
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs
from datasets import Dataset
from torch import nn
from tqdm.auto import tqdm
from transformers import (
    AutoModelForCausalLM,
    GenerationConfig,
    LogitsProcessor,
    LogitsProcessorList,
    PreTrainedTokenizerBase,
    Trainer,
    TrainingArguments,
    get_scheduler,
)

from .baselines import change_against_noise
from .chat import prompt_to_messages, prompts_that_fit
from .data import load_rows
from .distributed import own_class
from .loading import check_vocab, load_model, load_reward_function, load_score_model
from .muon import muon_optimizer
from .ppo_core import (
    AdaptiveKLController,
    clipped_policy_loss,
    clipped_value_loss,
    entropy_from_logits,
    first_eos_mask,
    gae,
    gumbel_noise,
    kl_penalized_rewards,
    kl_per_token,
    logprobs_from_logits,
    masked_mean,
    masked_whiten,
)
from .progress import progress_line
from .report import plot_panels
from .reward import render_for_reward
from .run_folder import last_complete_checkpoint, write_json
from .stage import ChatConfig, LoraConfigFields, Stage, load_starting_model, peft_config
from .throughput import ThroughputMeter, forward_flops_per_token

RewardFunction = Callable[[list, list[str]], list[float]]
# What each progress line shows (all of it goes to ppo_log.json and the trackers).
PROGRESS_FIGURES = {"score": "objective/scores", "KL": "objective/kl", "score − β·KL": "objective/rlhf_reward",
                    "policy loss": "loss/policy_avg", "value loss": "loss/value_avg",
                    "tokens/s": "perf/tokens_per_second"}

# The TrainingArguments fields our PPO loop uses. Any other one set away from its default is refused when the config
# is parsed (one line naming it), instead of being accepted and silently ignored.
HONOURED_TRAINING_ARGUMENTS = frozenset({
    "output_dir", "seed", "max_steps", "disable_tqdm", "per_device_train_batch_size", "gradient_accumulation_steps",
    "learning_rate", "lr_scheduler_type", "lr_scheduler_kwargs", "warmup_steps", "optim", "optim_args",
    "weight_decay", "adam_beta1", "adam_beta2", "adam_epsilon", "max_grad_norm", "bf16", "fp16",
    "gradient_checkpointing", "gradient_checkpointing_kwargs", "activation_checkpointing",
    "activation_checkpointing_kwargs", "logging_steps", "report_to", "run_name",
    "save_strategy", "save_steps", "save_total_limit", "use_cpu", "ddp_find_unused_parameters",
    "resume_from_checkpoint", "push_to_hub", "hub_model_id", "hub_token", "hub_private_repo", "hub_revision",
    "local_rank",  # set by launchers
})


@dataclass
class PPOConfig(ChatConfig, LoraConfigFields, TrainingArguments):
    """PPO hyper-parameters (names as in TRL's last PPOConfig) plus models and data; YAML-configurable."""

    reward_model_path: str | None = field(default=None, metadata={"help": "Reward model folder (optional with "
                                                                          "reward functions)."})
    value_model_path: str | None = field(default=None, metadata={"help": "Value model init (default: the RM)."})
    prompt_column: str = field(default="prompt", metadata={"help": "Text or list of chat messages."})
    drop_long_prompts: bool = field(default=False, metadata={"help": "Drop (and count) prompts with no room for "
                                                                     "response_length tokens instead of failing."})
    response_length: int = field(default=32, metadata={"help": "Max new tokens per rollout."})
    temperature: float = field(default=0.7, metadata={"help": "Sampling temperature (no top-k/top-p)."})
    num_ppo_epochs: int = field(default=4, metadata={"help": "Passes over each rollout batch."})
    num_mini_batches: int = field(default=1, metadata={"help": "Minibatches per PPO epoch."})
    kl_coef: float = field(default=0.05, metadata={"help": "β of the KL penalty (initial β if adaptive)."})
    kl_estimator: str = field(default="k1", metadata={"help": "k1 or k3."})
    adaptive_kl: bool = field(default=False, metadata={"help": "Adapt β towards target_kl."})
    target_kl: float = field(default=6.0, metadata={"help": "Target KL (nats per response) for adaptive β."})
    kl_horizon: int = field(default=10000, metadata={"help": "Horizon of the adaptive KL controller."})
    missing_eos_penalty: float | None = field(default=1.0, metadata={"help": "Subtracted from scores w/o eos."})
    whiten_rewards: bool = field(default=False, metadata={"help": "Whiten the per-token rewards."})
    gamma: float = field(default=1.0, metadata={"help": "Discount."})
    lam: float = field(default=0.95, metadata={"help": "GAE λ."})
    cliprange: float = field(default=0.2, metadata={"help": "Policy ratio clip ε."})
    cliprange_value: float = field(default=0.2, metadata={"help": "Value clip."})
    vf_coef: float = field(default=0.1, metadata={"help": "Value loss weight."})
    reward_functions: list[str] | None = field(default=None, metadata={"help": "Dotted paths of reward functions "
                                                                               "f(prompts, completions)."})
    reward_weights: list[float] | None = field(default=None, metadata={"help": "Weights of the reward sources."})
    use_peft: bool = field(default=False, metadata={"help": "LoRA on the policy; the reference is the policy with "
                                                            "its adapters disabled (no second copy)."})
    lora_dropout: float = field(default=0.0, metadata={"help": "Must be 0: PPO turns every dropout off, so that "
                                                               "rollout and update log-probabilities agree."})
    sample_every: int = field(default=10, metadata={"help": "Log a table of sample completions every N steps."})
    output_dir: str = field(default="runs/ppo", metadata={"help": "Where checkpoints and models go."})
    learning_rate: float = field(default=3e-5, metadata={"help": "Adam learning rate (policy and value)."})
    max_steps: int = field(default=100, metadata={"help": "PPO steps (one rollout batch each)."})
    per_device_train_batch_size: int = field(default=8, metadata={"help": "Rollouts per process per micro-batch."})
    save_steps: float = field(default=50, metadata={"help": "Checkpoint every N PPO steps."})
    logging_steps: float = field(default=1, metadata={"help": "Log every N PPO steps."})
    adam_epsilon: float = field(default=1e-5, metadata={"help": "Adam ε (1e-5, as in PPO implementations)."})
    lr_scheduler_type: str = field(default="constant", metadata={"help": "Learning-rate schedule over PPO steps "
                                                                         "(linear, cosine, ...)."})

    def __post_init__(self):
        self.check_honoured_fields()
        super().__post_init__()
        if self.kl_estimator not in ("k1", "k3"):
            raise ValueError(f"kl_estimator must be 'k1' or 'k3', got {self.kl_estimator!r}.")
        if self.save_strategy not in ("no", "steps"):
            raise ValueError(f"PPO saves checkpoints every save_steps PPO steps or never: save_strategy must be "
                             f"'steps' or 'no', got {self.save_strategy!r}.")
        if self.lora_dropout:
            raise ValueError(f"PPO turns dropout off (rollout and update log-probabilities must agree): lora_dropout "
                             f"must be 0, got {self.lora_dropout}.")
        for name in ("logging_steps", "save_steps"):  # as Trainer reads them: below 1, a fraction of max_steps
            value = getattr(self, name)
            setattr(self, name, math.ceil(self.max_steps * value) if 0 < value < 1 else int(value))

    def check_honoured_fields(self) -> None:
        """Refuse every TrainingArguments field set away from its default that the PPO loop would not use."""
        ours = {f.name: f for f in dataclasses.fields(self)}
        for name in (f.name for f in dataclasses.fields(TrainingArguments)):
            if name in HONOURED_TRAINING_ARGUMENTS or name not in ours:
                continue
            f = ours[name]
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            value = getattr(self, name)
            if not _same_setting(value, default):
                raise ValueError(f"PPO does not use {name} (set to {value!r}): remove it from the config or flags.")

    @property
    def local_batch_size(self) -> int:
        """Rollouts per process per PPO step."""
        return self.per_device_train_batch_size * self.gradient_accumulation_steps * self.num_mini_batches


def _same_setting(value, default) -> bool:
    """Equal, or two spellings of the same setting: enums and their strings, and the parser's forms of 'unset'."""
    unset = lambda v: v in (None, False, "", "no", "none", [], [None], ["none"])
    return value == default or str(value) == str(default) or (unset(value) and unset(default))


class RolloutSampler(LogitsProcessor):
    """Sampling at temperature τ as argmax(z/τ + g), g Gumbel noise from one generator per rollout, seeded by (seed,
    PPO step, the rollout's row in the global batch): the same rollouts whatever the number of processes, and again
    after a resume."""

    def __init__(self, temperature: float, seed: int, step: int, first_row: int, rows: int, device):
        self.temperature = temperature
        self.generators = [torch.Generator(device=device).manual_seed((seed * 1_000_003 + step) * 1_000_033 + row)
                           for row in range(first_row, first_row + rows)]

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        noise = gumbel_noise(self.generators, scores.shape[-1], scores.device)
        return scores.float() / self.temperature + noise


class PolicyAndValue(nn.Module):
    """One module for Accelerate/DDP, so policy and value train with one optimizer and one backward."""

    def __init__(self, policy: nn.Module, value_model: nn.Module):
        super().__init__()
        self.policy, self.value_model = policy, value_model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        logits = self.policy(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
        values = per_token_values(self.value_model, input_ids, attention_mask)
        return logits, values

    def tie_weights(self) -> None:
        """Accelerate's FSDP2 re-ties weights (tied embeddings and lm_head) through the root module's tie_weights after
        rebuilding the model from meta: without this, the policy's head would train apart from its embeddings."""
        self.policy.tie_weights()
        self.value_model.tie_weights()


@contextlib.contextmanager
def gathered(model: nn.Module):
    """Under FSDP2 the policy's own (root-level) parameters are gathered only by the root module's forward; generation
    calls the policy directly, so gather them around it (each DecoderBlock still gathers its own)."""
    from torch.distributed.fsdp import FSDPModule

    if not isinstance(model, FSDPModule):
        yield
        return
    if not getattr(model, "_hf_gpt_initialised", False):  # FSDP sets itself up in the root's first forward
        device = next(model.parameters()).device
        model(torch.zeros(1, 1, dtype=torch.long, device=device), torch.ones(1, 1, dtype=torch.long, device=device))
        model._hf_gpt_initialised = True
    model.unshard()
    try:
        yield
    finally:
        model.reshard()


def per_token_values(value_model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """V(s_t) for every position: the score head applied to every hidden state, not only the last one."""
    hidden = value_model.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
    return value_model.score(hidden).squeeze(-1).float()  # (B, T); float32 for GAE under mixed precision


def check_prompt_column(dataset: Dataset, column: str) -> None:
    if column not in dataset.column_names:
        raise ValueError(f"The prompt data has columns {dataset.column_names}, no {column!r}: set --prompt_column to "
                         "the column that holds the prompts.")


def disable_dropout(*models: nn.Module) -> None:
    for model in models:
        for module in model.modules():
            if isinstance(module, nn.Dropout):
                module.p = 0.0


def encode_prompts(tokenizer: PreTrainedTokenizerBase, prompts: list[list[dict]], device) -> dict[str, torch.Tensor]:
    """Chat-template the prompts (ending with the assistant marker) and left-pad them into a batch."""
    ids = [tokenizer.apply_chat_template(p, add_generation_prompt=True, return_dict=True)["input_ids"] for p in prompts]
    width = max(map(len, ids))
    input_ids = torch.full((len(ids), width), tokenizer.pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    for row, seq in enumerate(ids):
        input_ids[row, width - len(seq):] = torch.tensor(seq)
        attention_mask[row, width - len(seq):] = 1
    return {"input_ids": input_ids.to(device), "attention_mask": attention_mask.to(device)}


class PPOTrainer:
    """PPO for hf_gpt (or any causal LM + sequence-classification value model with a `.score` head)."""

    def __init__(self, args: PPOConfig, policy: nn.Module, ref_policy: nn.Module | None, value_model: nn.Module,
                 processing_class: PreTrainedTokenizerBase, train_dataset: Dataset,
                 reward_model: nn.Module | None = None, reward_funcs: Sequence[RewardFunction] = ()):
        self.args, self.tokenizer = args, processing_class
        self.reward_model, self.reward_funcs = reward_model, list(reward_funcs)
        self.reward_weights = self._reward_weights()
        if ref_policy is None and not hasattr(policy, "disable_adapter"):
            raise ValueError("Give ref_policy (the frozen SFT model), or a PEFT policy whose adapters can be disabled.")
        self.accelerator = self._accelerator()
        disable_dropout(policy, value_model, *(m for m in (ref_policy, reward_model) if m is not None))
        if args.activation_checkpointing:  # or its old name gradient_checkpointing, which TrainingArguments maps
            for model in (policy, value_model):
                model.activation_checkpointing_enable(args.activation_checkpointing_kwargs)
        model = PolicyAndValue(policy, value_model)
        optimizer, lr_scheduler = self._optimizer_and_schedule(model)
        self.model, self.optimizer, self.loader, self.lr_scheduler = self.accelerator.prepare(
            model, optimizer, self._prompt_loader(train_dataset), lr_scheduler)
        if args.report_to:
            self.accelerator.init_trackers(args.run_name or "runs", config={k: v for k, v in args.to_dict().items()
                                                                         if isinstance(v, (int, float, str, bool))})
        device = self.accelerator.device
        self.ref_policy = ref_policy.to(device).eval() if ref_policy is not None else None
        if reward_model is not None:
            self.reward_model = reward_model.to(device).eval()
        self.kl_ctl = AdaptiveKLController(args.kl_coef, args.target_kl, args.kl_horizon)
        # Sampling is the Gumbel-max trick in a logits processor (`RolloutSampler`), so greedy decoding here.
        self.generation_config = GenerationConfig(
            max_new_tokens=args.response_length, do_sample=False, eos_token_id=processing_class.eos_token_id,
            pad_token_id=processing_class.pad_token_id)
        self.step, self.log_history = 0, []
        self.throughput = ThroughputMeter(device, args.peak_tflops, self.accelerator.num_processes)

    def _reward_weights(self) -> torch.Tensor:
        n_sources = int(self.reward_model is not None) + len(self.reward_funcs)
        if not n_sources:
            raise ValueError("PPO needs a reward: give reward_model, reward_funcs, or both.")
        weights = torch.tensor(self.args.reward_weights or [1.0] * n_sources)
        if len(weights) != n_sources:
            raise ValueError(f"reward_weights has {len(weights)} entries for {n_sources} reward sources.")
        return weights

    def _accelerator(self) -> Accelerator:
        """Mixed precision, trackers (report_to) and DDP options through Accelerate, as transformers' Trainer does."""
        args = self.args
        return Accelerator(
            gradient_accumulation_steps=args.gradient_accumulation_steps, cpu=args.use_cpu,
            mixed_precision="bf16" if args.bf16 else "fp16" if args.fp16 else "no",
            log_with=args.report_to or None, project_dir=args.output_dir,
            kwargs_handlers=[DistributedDataParallelKwargs(
                find_unused_parameters=bool(args.ddp_find_unused_parameters))])

    def _optimizer_and_schedule(self, model: nn.Module) -> tuple:
        """optim, optim_args, betas, ε and weight decay exactly as transformers' Trainer reads them; one scheduler
        step per PPO step (as TRL's PPOTrainer), warm-up included."""
        args = self.args
        if args.muon:
            optimizer = muon_optimizer(model, args)
        else:
            optimizer_cls, optimizer_kwargs = Trainer.get_optimizer_cls_and_kwargs(args, model)
            optimizer = optimizer_cls(model.parameters(), **optimizer_kwargs)
        return optimizer, get_scheduler(args.lr_scheduler_type, optimizer,
                                        num_warmup_steps=args.get_warmup_steps(args.max_steps),
                                        num_training_steps=args.max_steps,
                                        scheduler_specific_kwargs=args.lr_scheduler_kwargs or {})

    def _prompt_loader(self, dataset: Dataset) -> torch.utils.data.DataLoader:
        """Batches of `local_batch_size` prompts as chat messages (with the system prompt), shuffled with the seed."""
        args = self.args
        check_prompt_column(dataset, args.prompt_column)
        loader = torch.utils.data.DataLoader(
            dataset, batch_size=args.local_batch_size, shuffle=True, drop_last=True,
            collate_fn=lambda rows: [prompt_to_messages(r[args.prompt_column], args.system_prompt) for r in rows],
            generator=torch.Generator().manual_seed(args.seed))
        if len(loader) == 0:
            raise ValueError(f"{len(dataset)} prompts is fewer than one rollout batch ({args.local_batch_size}).")
        return loader

    # ---------------------------------------------------------------- rollout and scoring

    @torch.no_grad()
    def rollout(self, prompts: list[list[dict]]) -> dict[str, torch.Tensor]:
        """Sample responses, cut them after the first eos, and compute old logprobs, ref logprobs and values."""
        policy = self.accelerator.unwrap_model(self.model).policy
        queries = encode_prompts(self.tokenizer, prompts, self.accelerator.device)
        context = queries["input_ids"].shape[1]
        policy.eval()
        first_row = self.accelerator.process_index * len(prompts)  # the rows' place in the global batch
        sampler = RolloutSampler(self.args.temperature, self.args.seed, self.step, first_row, len(prompts),
                                 self.accelerator.device)
        with self.accelerator.autocast(), gathered(self.model):
            sequences = policy.generate(**queries, generation_config=self.generation_config,
                                        logits_processor=LogitsProcessorList([sampler]))
        responses = sequences[:, context:]
        if responses.shape[1] < self.args.response_length:  # every row stopped early
            pad = self.args.response_length - responses.shape[1]
            responses = nn.functional.pad(responses, (0, pad), value=self.tokenizer.pad_token_id)
        mask, last_index, contains_eos = first_eos_mask(responses, self.tokenizer.eos_token_id)
        responses = responses.masked_fill(mask == 0, self.tokenizer.pad_token_id)
        query_responses = torch.cat([queries["input_ids"], responses], dim=1)
        attention_mask = torch.cat([queries["attention_mask"], mask], dim=1)
        logits, values = self.model(query_responses, attention_mask)
        logprobs = logprobs_from_logits(logits[:, context - 1:-1], responses, self.args.temperature)
        with self.accelerator.autocast():
            ref_logits = self.reference_logits(query_responses, attention_mask)
        ref_logprobs = logprobs_from_logits(ref_logits[:, context - 1:-1], responses, self.args.temperature)
        completions = self.tokenizer.batch_decode(responses * mask + self.tokenizer.pad_token_id * (1 - mask),
                                                  skip_special_tokens=True)
        return {"query_responses": query_responses, "attention_mask": attention_mask, "responses": responses,
                "mask": mask, "last_index": last_index, "contains_eos": contains_eos, "logprobs": logprobs,
                "ref_logprobs": ref_logprobs, "values": values[:, context - 1:-1],
                "entropy": masked_mean(entropy_from_logits(logits[:, context - 1:-1], self.args.temperature),
                                       mask), "completions": completions, "context": context}

    def reference_logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """π_ref: the frozen SFT model, or with LoRA the policy itself with its adapters switched off."""
        kwargs = dict(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        if self.ref_policy is not None:
            return self.ref_policy(**kwargs).logits
        policy = self.accelerator.unwrap_model(self.model).policy
        with policy.disable_adapter():
            return policy(**kwargs).logits

    @torch.no_grad()
    def score(self, prompts: list[list[dict]], completions: list[str]) -> torch.Tensor:
        """Weighted sum of the reward sources, one score per completion."""
        columns = []
        if self.reward_model is not None:
            ids = [render_for_reward(self.tokenizer, p, c) for p, c in zip(prompts, completions)]
            # Decoded text can re-encode longer than it was generated (a half-trained model's stray bytes come back
            # as U+FFFD, three bytes each): keep the end, the reply and its eos that the RM reads its score at.
            limit = self.reward_model.config.max_position_embeddings
            ids = [row[-limit:] for row in ids]
            batch = self.tokenizer.pad({"input_ids": ids}, return_tensors="pt").to(self.accelerator.device)
            with self.accelerator.autocast():
                columns.append(self.reward_model(**batch).logits[:, 0].float())
        for func in self.reward_funcs:
            values = func(prompts, completions)
            name = getattr(func, "__name__", repr(func))
            if len(values) != len(completions):
                raise ValueError(f"Reward function {name} returned {len(values)} scores for {len(completions)} "
                                 "completions: return one float per completion.")
            scores = torch.tensor([float(v) for v in values], device=self.accelerator.device)
            if not torch.isfinite(scores).all():
                raise ValueError(f"Reward function {name} returned NaN or inf: {values}")
            columns.append(scores)
        return (torch.stack(columns, dim=1) * self.reward_weights.to(columns[0].device)).sum(dim=1)

    # ---------------------------------------------------------------- one PPO step

    def step_flops(self, rows: int, length: int) -> float:
        """Model FLOPs of one PPO step: generation and the rollout's forward passes (policy, value, reference,
        reward model: one each per token), then num_ppo_epochs of policy + value updates (three forwards each)."""
        model = self.accelerator.unwrap_model(self.model)
        policy = getattr(model.policy, "get_base_model", lambda: model.policy)()
        forward = lambda m: forward_flops_per_token(m, length) if m is not None else 0.0
        trained = forward(policy) + forward(model.value_model)
        frozen = forward(policy) + forward(self.reward_model)  # reference = policy's shape
        return rows * length * (forward(policy) + trained + frozen + 3 * self.args.num_ppo_epochs * trained)

    def ppo_step(self, prompts: list[list[dict]]) -> dict[str, float]:
        args = self.args
        self.throughput.add(0, 0)  # the step's clock starts with its rollout
        batch = self.rollout(prompts)
        mask, context = batch["mask"], batch["context"]
        scores = self.score(prompts, batch["completions"])
        if args.missing_eos_penalty is not None:
            scores = scores - args.missing_eos_penalty * (~batch["contains_eos"]).float()
        kl = kl_per_token(batch["logprobs"], batch["ref_logprobs"], args.kl_estimator)
        rewards, non_score = kl_penalized_rewards(scores, kl, mask, batch["last_index"], self.kl_ctl.value)
        total = lambda x: self.accelerator.reduce(x, "sum")  # over every process's rollouts: as one process would
        if args.whiten_rewards:
            rewards = masked_whiten(rewards, mask, shift_mean=False, total=total)  # as TRL: scale only, sign kept
        advantages, returns = gae(rewards, batch["values"], mask, args.gamma, args.lam)
        advantages = masked_whiten(advantages, mask, total=total)

        stats = {"approxkl": [], "clipfrac": [], "pg_loss": [], "vf_loss": [], "vf_clipfrac": [], "ratio": []}
        self.model.train()
        n = len(prompts)
        minibatch = n // args.num_mini_batches
        for _ in range(args.num_ppo_epochs):
            order = torch.randperm(n)
            for start in range(0, n, minibatch):
                indices = order[start:start + minibatch]
                for micro in indices.split(args.per_device_train_batch_size):
                    # Losses are sums over this process's tokens / (all processes' tokens / processes): DDP's mean of
                    # the processes' gradients is then the gradient of the mean over every token, as in one process.
                    tokens = total(mask[micro].sum().float()) / self.accelerator.num_processes
                    with self.accelerator.accumulate(self.model):
                        logits, values = self.model(batch["query_responses"][micro], batch["attention_mask"][micro])
                        new_logprobs = logprobs_from_logits(logits[:, context - 1:-1], batch["responses"][micro],
                                                            args.temperature)
                        pg_loss, pg_stats = clipped_policy_loss(new_logprobs, batch["logprobs"][micro],
                                                                advantages[micro], mask[micro], args.cliprange, tokens)
                        vf_loss, vf_clipfrac = clipped_value_loss(values[:, context - 1:-1], batch["values"][micro],
                                                                  returns[micro], mask[micro], args.cliprange_value,
                                                                  tokens)
                        self.accelerator.backward(pg_loss + args.vf_coef * vf_loss)
                        if self.accelerator.sync_gradients and args.max_grad_norm:
                            self.accelerator.clip_grad_norm_(self.model.parameters(), args.max_grad_norm)
                        self.optimizer.step()
                        self.optimizer.zero_grad()
                    for key, value in (("pg_loss", pg_loss), ("vf_loss", vf_loss), ("vf_clipfrac", vf_clipfrac),
                                       *pg_stats.items()):
                        stats[key].append(value.detach())
        kl_sum = (kl * mask).sum(1)
        mean = lambda x: self.accelerator.gather_for_metrics(x.float().reshape(-1)).mean().item()
        metrics = {
            "objective/kl": mean(kl_sum),
            "objective/entropy": mean(batch["entropy"]),
            "objective/non_score_reward": mean(non_score.sum(1)),
            "objective/rlhf_reward": mean(scores - self.kl_ctl.value * kl_sum),
            "objective/scores": mean(scores),
            "policy/approxkl_avg": mean(torch.stack(stats["approxkl"])),
            "policy/clipfrac_avg": mean(torch.stack(stats["clipfrac"])),
            "loss/policy_avg": mean(torch.stack(stats["pg_loss"])),
            "loss/value_avg": mean(torch.stack(stats["vf_loss"])),
            "val/clipfrac_avg": mean(torch.stack(stats["vf_clipfrac"])),
            "val/ratio": mean(torch.stack(stats["ratio"])),
            "val/num_eos_tokens": self.accelerator.gather_for_metrics(batch["contains_eos"].long()).sum().item(),
            "beta": self.kl_ctl.value,
            "lr": self.lr_scheduler.get_last_lr()[0],
        }
        rows, length = batch["query_responses"].shape
        self.throughput.add(rows * length, self.step_flops(rows, length))
        self.lr_scheduler.step()
        if args.adaptive_kl:
            self.kl_ctl.update(metrics["objective/kl"], n * self.accelerator.num_processes)
        self._last_samples = list(zip(prompts, batch["completions"], scores.tolist()))
        return metrics

    # ---------------------------------------------------------------- loop, checkpoints, saving

    def train(self, resume_from_checkpoint: str | bool | None = None) -> list[dict]:
        args, out = self.args, Path(self.args.output_dir)
        if resume_from_checkpoint:
            self._load_checkpoint(resume_from_checkpoint)
        batches = self._prompt_batches()
        main = self.accelerator.is_main_process
        progress = tqdm(total=args.max_steps, initial=self.step, desc="PPO steps", unit="step",
                        disable=bool(args.disable_tqdm) or not main or not sys.stderr.isatty())
        if main:  # the first line comes after the first rollout and update: say what is coming
            rollouts = args.local_batch_size * self.accelerator.num_processes
            print(f"[PPO] {args.max_steps - self.step} steps to go, each {rollouts} rollouts of up to "
                  f"{args.response_length} tokens and {args.num_ppo_epochs} update epochs", flush=True)
        start, first_step = time.perf_counter(), self.step
        while self.step < args.max_steps:
            metrics = self.ppo_step(next(batches))
            self.step += 1
            progress.update(1)
            metrics["step"] = self.step
            if self.step % args.logging_steps == 0 or self.step == 1:
                metrics.update(self.throughput.report("perf/"))
            self.log_history.append(metrics)
            if self.step % args.logging_steps == 0 or self.step == 1:
                self.accelerator.log(metrics, step=self.step)
                if main:
                    shown = {name: metrics[key] for name, key in PROGRESS_FIGURES.items() if key in metrics}
                    line = progress_line("PPO", self.step, args.max_steps, self.step - first_step,
                                         time.perf_counter() - start, shown)
                    progress.write(line) if not progress.disable else print(line, flush=True)
            if self.accelerator.is_main_process and args.sample_every and self.step % args.sample_every == 0:
                self._write_samples(out)
            if (args.save_strategy == "steps" and args.save_steps and self.step % args.save_steps == 0
                    and self.step < args.max_steps):
                self.throughput.pause()
                self._save_checkpoint()
        progress.close()
        for tracker in self.accelerator.trackers:  # not end_training(): saving the model still needs every rank
            tracker.finish()
        return self.log_history

    def _prompt_batches(self):
        """An endless stream of prompt batches, reproducible from (seed, step) so a resumed run sees the same data."""
        consumed = self.step
        epoch = 0
        while True:
            self.loader.set_epoch(epoch) if hasattr(self.loader, "set_epoch") else None
            for batch in self.loader:
                if consumed:
                    consumed -= 1
                    continue
                yield batch
            epoch += 1

    def _save_checkpoint(self) -> None:
        folder = Path(self.args.output_dir) / f"checkpoint-{self.step}"
        self.accelerator.save_state(str(folder), safe_serialization=True)
        if self.accelerator.is_main_process:
            state = {"step": self.step, "kl_coef": self.kl_ctl.value, "log_history": self.log_history}
            write_json(folder / "ppo_state.json", state)
            self._rotate_checkpoints()
        self.accelerator.wait_for_everyone()

    def _rotate_checkpoints(self) -> None:
        """Keep the newest `save_total_limit` checkpoints, as transformers' Trainer does."""
        if not self.args.save_total_limit:
            return
        found = sorted(Path(self.args.output_dir).glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
        for old in found[:-self.args.save_total_limit]:
            shutil.rmtree(old)

    def _load_checkpoint(self, checkpoint: str | bool) -> None:
        if checkpoint is True:
            checkpoint = last_complete_checkpoint(self.args.output_dir, "ppo_state.json")
            if checkpoint is None:
                return
        self.accelerator.load_state(str(checkpoint))
        state = json.loads((Path(checkpoint) / "ppo_state.json").read_text())
        self.step, self.kl_ctl.value, self.log_history = state["step"], state["kl_coef"], state["log_history"]

    def _write_samples(self, out: Path) -> None:
        out.mkdir(parents=True, exist_ok=True)
        with open(out / "samples.md", "a", encoding="utf-8") as f:
            f.write(f"\n## step {self.step}\n\n| prompt | completion | score |\n|---|---|---:|\n")
            for prompt, completion, score in self._last_samples[:8]:
                text = prompt[-1]["content"].replace("\n", " ").replace("|", "/")[:80]
                f.write(f"| {text} | {completion.replace(chr(10), ' ').replace('|', '/')[:120]} | {score:.3f} |\n")

    def throughput_summary(self) -> dict[str, float | str]:
        return self.throughput.summary()

    def save_model(self, output_dir: str | None = None) -> None:
        """The policy (with tokenizer and code) in output_dir, the value model in output_dir/value_model; every rank
        calls it (a sharded model is gathered first)."""
        self.accelerator.wait_for_everyone()
        sharded = self.accelerator.is_fsdp2
        full = self.accelerator.get_state_dict(self.model) if sharded else {}  # every rank takes part in the gather
        if not self.accelerator.is_main_process:
            return
        out = Path(output_dir or self.args.output_dir)
        model = self.accelerator.unwrap_model(self.model)
        for name, folder in (("policy", out), ("value_model", out / "value_model")):
            part = {k.removeprefix(f"{name}."): v for k, v in full.items() if k.startswith(f"{name}.")}
            with own_class(getattr(model, name)) as submodel:
                submodel.save_pretrained(folder, **({"state_dict": part} if sharded else {}))
            self.tokenizer.save_pretrained(folder)


def score_change(history: list[dict]) -> dict:
    """Mean RM score and KL over the first and the last quarter of the steps, and whether the score rose by more
    than its step-to-step noise (95 % interval): PPO claims a gain only then."""
    k = max(len(history) // 4, 1)
    first, last = history[:k], history[-k:]
    mean = lambda rows, key: sum(h[key] for h in rows) / len(rows)
    change = change_against_noise([h["objective/scores"] for h in first], [h["objective/scores"] for h in last])
    return {"score_first": mean(first, "objective/scores"), "score_last": mean(last, "objective/scores"),
            "score_change_interval": change["interval"], "beats_baseline": change["beats_baseline"],
            "kl_last": mean(last, "objective/kl"), "kl_max": max(h["objective/kl"] for h in history)}


def plot_ppo_curves(history: list[dict], path: Path) -> None:
    points = lambda key: [(h["step"], h[key]) for h in history]
    plot_panels(path, [("reward", "PPO step", "reward-model score", {"score": points("objective/scores"),
                                                                     "score − β·KL": points("objective/rlhf_reward")}),
                       ("KL(π ‖ π_ref) per response", "PPO step", "nats (k1 estimate: a batch's mean can dip below 0)",
                        {"KL": points("objective/kl")})], width=5)


def load_ppo_models(args: PPOConfig):
    """Policy and reference from the SFT folder; reward model and value model from the RM folder."""
    if not (args.reward_model_path or args.value_model_path):
        raise ValueError("Give reward_model_path (the value model starts from it) or value_model_path.")
    tokenizer, policy = load_starting_model(args, AutoModelForCausalLM, "the SFT folder or Hub id")
    ref_policy = None
    if args.use_peft:
        from peft import get_peft_model

        policy = get_peft_model(policy, peft_config(args))
    else:
        ref_policy = load_model(AutoModelForCausalLM, args.model_name_or_path, "the reference policy",
                                args.trust_remote_code)
    remote = args.trust_remote_code
    reward_model = load_score_model(args.reward_model_path, "reward model", remote) if args.reward_model_path else None
    value_model = load_score_model(args.value_model_path or args.reward_model_path, "value model", remote)
    for model, path in ((reward_model, args.reward_model_path), (value_model, args.value_model_path)):
        if model is not None:  # they read the policy's token ids
            check_vocab(tokenizer, model, path or args.reward_model_path)
    return tokenizer, policy, ref_policy, reward_model, value_model


class PPO(Stage):
    """PPO as a stage: a PPOTrainer over the prompts; the summary's metrics are the score's change."""

    name, title, state_file = "ppo", "PPO", "ppo_state.json"

    def __init__(self, args: PPOConfig, reward_funcs: Sequence[RewardFunction] | None = None):
        super().__init__(args)
        self.reward_funcs = reward_funcs

    def build(self, checkpoint: str | None) -> PPOTrainer:
        args = self.args
        reward_funcs = self.reward_funcs
        if reward_funcs is None:
            reward_funcs = [load_reward_function(path) for path in args.reward_functions or []]
        tokenizer, policy, ref_policy, reward_model, value_model = load_ppo_models(args)
        dataset = load_rows(args)
        check_prompt_column(dataset, args.prompt_column)
        dataset = dataset.select(prompts_that_fit(dataset[args.prompt_column], tokenizer,
                                                  policy.config.max_position_embeddings, args.response_length,
                                                  args.system_prompt, args.drop_long_prompts))
        return PPOTrainer(args, policy, ref_policy, value_model, tokenizer, dataset, reward_model, reward_funcs)

    def evaluate(self, trainer: PPOTrainer) -> dict:
        return score_change(trainer.log_history)

    def write_files(self, trainer: PPOTrainer, metrics: dict) -> None:
        out = Path(self.args.output_dir)
        write_json(out / "ppo_log.json", trainer.log_history)
        plot_ppo_curves(trainer.log_history, out / "ppo_curves.png")

    def steps(self, trainer: PPOTrainer) -> int:
        return trainer.step


def ppo(args: PPOConfig, reward_funcs: Sequence[RewardFunction] | None = None,
        resume_from_checkpoint: str | bool = True) -> PPOTrainer:
    """Train with PPO; reward functions are `reward_funcs` or, if None, those named in `args.reward_functions`."""
    return PPO(args, reward_funcs).run(resume_from_checkpoint)


__all__ = ["PPO", "PPOConfig", "PPOTrainer", "ppo"]
