"""One GPU, GPT-2 small: hf-gpt's pretraining speed against two references measured in the same run.

    python bench/gpu_bench.py                     # 124M, context 1024, bf16, torch.compile, fused AdamW, on cuda
    python bench/gpu_bench.py --device cpu --tiny --no-compile   # a smoke run of the same code (tests do this)

Training (tokens/s of whole optimizer steps, median after warm-up; rounds interleaved A B C, C B A):
  A. HfGptForCausalLM through hf-gpt's pretraining Trainer (PretrainTrainer)
  B. transformers' GPT2LMHeadModel through the same Trainer                    target: A/B >= 1.0
  C. a plain nanoGPT-style PyTorch loop: the bench's own minimal GPT of the same shapes (F.scaled_dot_product_attention,
     tied embeddings), autocast, fused AdamW, compiled                         target: A/C >= 0.9
MFU = tokens/s x (6N + 12·L·d·T) / peak (hf_gpt.throughput; target A >= 40 % on an H100/H200), peak memory per run.
Decoding: batch-64 greedy generate with the KV cache, tokens/s, hf-gpt vs GPT2LMHeadModel.
"""

import argparse
import math
import statistics
import sys
import time
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from datasets import Dataset
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel, TrainerCallback

from hf_gpt import HfGptConfig, HfGptForCausalLM
from hf_gpt.pretrain import PretrainConfig, PretrainTrainer
from hf_gpt.throughput import device_name, forward_flops_per_token, peak_flops


class StepTimer(TrainerCallback):
    """Wall time of every optimizer step, the device synchronised at both ends."""

    def __init__(self, device: torch.device):
        self.device, self.times, self.start = device, [], 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        sync(self.device)
        self.start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        sync(self.device)
        self.times.append(time.perf_counter() - self.start)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ------------------------------------------------------------------ C: the plain loop's model, nanoGPT's model.py


class Block(nn.Module):
    def __init__(self, d: int, heads: int):
        super().__init__()
        self.heads = heads
        self.ln_1, self.ln_2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.c_attn, self.c_proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.c_fc, self.mlp_proj = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = (z.view(b, t, self.heads, d // self.heads).transpose(1, 2)
                   for z in self.c_attn(self.ln_1(x)).split(d, dim=2))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, d)
        x = x + self.c_proj(y)
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x))))


class PlainGPT(nn.Module):
    def __init__(self, vocab: int, context: int, layers: int, d: int, heads: int):
        super().__init__()
        self.config = SimpleNamespace(num_hidden_layers=layers, hidden_size=d)  # for the FLOP count
        self.embed_tokens, self.embed_positions = nn.Embedding(vocab, d), nn.Embedding(context, d)
        self.blocks = nn.ModuleList(Block(d, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(d)
        for name, p in self.named_parameters():  # nanoGPT's init: N(0, 0.02), residual projections / sqrt(2L)
            if p.dim() >= 2:
                std = 0.02 / math.sqrt(2 * layers) if name.endswith(("c_proj.weight", "mlp_proj.weight")) else 0.02
                nn.init.normal_(p, std=std)
            elif name.endswith("bias"):
                nn.init.zeros_(p)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed_tokens(ids) + self.embed_positions(torch.arange(ids.shape[1], device=ids.device))
        for block in self.blocks:
            x = block(x)
        logits = self.ln_f(x) @ self.embed_tokens.weight.T  # tied lm_head
        return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten())


# ------------------------------------------------------------------ the three contenders


def shapes(tiny: bool) -> dict:
    return dict(vocab=512, context=128, layers=2, d=64, heads=4) if tiny else \
        dict(vocab=50304, context=1024, layers=12, d=768, heads=12)


def hf_models(s: dict, device: torch.device) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    ours = HfGptForCausalLM(HfGptConfig(vocab_size=s["vocab"], n_layer=s["layers"], n_embd=s["d"], n_head=s["heads"],
                                        max_position_embeddings=s["context"], position_embedding_type="learned",
                                        bos_token_id=0, eos_token_id=1, pad_token_id=2))
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=s["vocab"], n_layer=s["layers"], n_embd=s["d"], n_head=s["heads"],
                                      n_positions=s["context"], resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                      bos_token_id=0, eos_token_id=1, pad_token_id=2))
    for model in (ours, gpt2):
        model.set_attn_implementation("sdpa")
    return ours.to(device), gpt2.to(device)


def collate(rows: list[dict]) -> dict[str, torch.Tensor]:
    ids = torch.tensor([row["input_ids"] for row in rows])
    return {"input_ids": ids, "labels": ids}  # the models shift the labels


def trainer_run(model: nn.Module, data: Dataset, args: argparse.Namespace, device: torch.device) -> list[float]:
    """Step times of `args.steps` optimizer steps through hf-gpt's pretraining Trainer."""
    timer = StepTimer(device)
    config = PretrainConfig(
        output_dir=f"{args.out}/{type(model).__name__}", per_device_train_batch_size=args.batch, max_steps=args.steps,
        learning_rate=6e-4, warmup_steps=0, bf16=device.type == "cuda", torch_compile=args.compile,
        optim="adamw_torch_fused" if device.type == "cuda" else "adamw_torch", eval_strategy="no",
        save_strategy="no", logging_steps=max(1, args.steps), report_to="none", disable_tqdm=True,
        use_cpu=device.type == "cpu", dataloader_num_workers=0, block_size=len(data[0]["input_ids"]))
    trainer = PretrainTrainer(model=model, args=config, train_dataset=data, callbacks=[timer], data_collator=collate)
    trainer.train()
    return timer.times


def plain_run(model: nn.Module, data: Dataset, args: argparse.Namespace, device: torch.device) -> list[float]:
    """Step times of the nanoGPT-style loop: autocast bf16 on a GPU, fused AdamW, compiled."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=6e-4, weight_decay=0.1, fused=device.type == "cuda")
    step_fn = torch.compile(model) if args.compile else model
    ids = torch.tensor(data["input_ids"], device=device)
    times = []
    for step in range(args.steps):
        batch = ids[(step * args.batch) % len(ids):][:args.batch]
        sync(device)
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = step_fn(batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync(device)
        times.append(time.perf_counter() - start)
    return times


@torch.no_grad()
def decode_tokens_per_second(model: nn.Module, batch: int, new_tokens: int, device: torch.device) -> float:
    model.eval()
    prompt = torch.randint(3, model.config.vocab_size, (batch, 16), device=device)
    kwargs = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, eos_token_id=None,
                  pad_token_id=2)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        model.generate(prompt, **{**kwargs, "max_new_tokens": 4, "min_new_tokens": 4})  # warm-up
        sync(device)
        start = time.perf_counter()
        model.generate(prompt, **kwargs)
        sync(device)
    return batch * new_tokens / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="a 2-layer, 64-wide model (smoke runs on a CPU)")
    parser.add_argument("--batch", type=int, default=16, help="sequences per step (GPT-2 small: 16 x 1024 tokens)")
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps per contender and round")
    parser.add_argument("--rounds", type=int, default=2, help="rounds; the order alternates A B C / C B A")
    parser.add_argument("--warmup", type=int, default=5, help="steps left out of each round (compilation)")
    parser.add_argument("--no-compile", dest="compile", action="store_false", help="skip torch.compile")
    parser.add_argument("--peak_tflops", type=float, default=None, help="the device's peak (default: a GPU table)")
    parser.add_argument("--decode-batch", type=int, default=64)
    parser.add_argument("--decode-tokens", type=int, default=128)
    parser.add_argument("--out", default="runs/gpu-bench")
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("bench/gpu_bench.py needs a CUDA GPU and this machine has none: `--device cpu --tiny --no-compile` "
                 "runs the same code tiny on the CPU; bench/pretrain_bench.py is the CPU benchmark.")
    device = torch.device(args.device)
    s = shapes(args.tiny)
    data = Dataset.from_dict({"input_ids": torch.randint(3, s["vocab"], (args.batch * args.steps, s["context"]),
                                                         generator=torch.Generator().manual_seed(0)).tolist()})
    ours, gpt2 = hf_models(s, device)
    torch.manual_seed(0)
    plain = PlainGPT(s["vocab"], s["context"], s["layers"], s["d"], s["heads"]).to(device)
    contenders = {"A hf-gpt (Trainer)": (ours, trainer_run), "B GPT2LMHeadModel (Trainer)": (gpt2, trainer_run),
                  "C plain loop (nanoGPT-style)": (plain, plain_run)}
    times = {name: [] for name in contenders}
    memory: dict[str, float | None] = dict.fromkeys(contenders, None)  # GiB, measured on a GPU only
    for round_ in range(args.rounds):
        for name in (list(contenders) if round_ % 2 == 0 else list(reversed(contenders))):
            model, run = contenders[name]
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            times[name] += run(model, data, args, device)[args.warmup:]
            if device.type == "cuda":
                memory[name] = max(memory[name] or 0.0, torch.cuda.max_memory_allocated(device) / 2**30)
    peak = peak_flops(device, args.peak_tflops)
    tokens = args.batch * s["context"]
    speed = {name: tokens / statistics.median(t) for name, t in times.items()}
    print(f"torch {torch.__version__}, {device_name(device)}, {s['layers']} layers x {s['d']} wide x {s['heads']} "
          f"heads, context {s['context']}, batch {args.batch}, bf16 {device.type == 'cuda'}, compile {args.compile}, "
          f"{args.rounds} rounds x {args.steps - args.warmup} timed steps\n")
    print("| run | tokens/s | MFU | peak memory GiB | ratio A / run |")
    print("|---|---:|---:|---:|---:|")
    a = speed["A hf-gpt (Trainer)"]
    for name, (model, _) in contenders.items():
        mfu = speed[name] * 3 * forward_flops_per_token(model, s["context"]) / peak if peak else None
        mfu_text = f"{mfu:.1%}" if mfu is not None else "n/a (no peak)"
        gib = f"{memory[name]:.1f}" if memory[name] is not None else "n/a"
        print(f"| {name} | {speed[name]:,.0f} | {mfu_text} | {gib} | {a / speed[name]:.2f}x |")
    print("\nTargets: A/B >= 1.0x, A/C >= 0.9x, MFU(A) >= 40 % on an H100/H200.")
    decode = {name: decode_tokens_per_second(model, args.decode_batch, args.decode_tokens, device)
              for name, model in (("hf-gpt", ours), ("GPT2LMHeadModel", gpt2))}
    print(f"\nDecoding, batch {args.decode_batch}, {args.decode_tokens} new tokens, KV cache: hf-gpt "
          f"{decode['hf-gpt']:,.0f} tokens/s, GPT2LMHeadModel {decode['GPT2LMHeadModel']:,.0f} tokens/s "
          f"({decode['hf-gpt'] / decode['GPT2LMHeadModel']:.2f}x)")


if __name__ == "__main__":
    main()
