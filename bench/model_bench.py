"""Model speed, measured in one run against references of identical size (a benchmark, not a test).

    python bench/model_bench.py [--quick] [--device cuda] [--compiled] [--batch 8]

1. training-step tokens/s: HfGptForCausalLM vs transformers' GPT2LMHeadModel (6 layers, 384 wide, 6 heads,
   context 256, learned positions, no dropout, SDPA both; each with its default activation: ours exact GELU, one
   fused kernel; GPT-2 `gelu_new`, the tanh approximation in five kernels)              target >= 1.10x
2. generate tokens/s for 512 new tokens: KV cache vs recomputing the whole sequence each step   target >= 10x
3. cached generate tokens/s: ours vs GPT2LMHeadModel's                                     target >= 1.0x

Runs being compared are interleaved, because this shared 2-core machine has slow spells of tens of seconds. Below the
table: batch-1 decoding split into reading the weights and per-token overhead, the latter measured on a 48-wide
model of the same depth (whose weights are negligible). `--compiled` adds transformers' static KV cache with
`torch.compile` (CUDA graphs on a GPU), compiled once before timing.
"""

import argparse
import statistics
import time

import torch
from transformers import CompileConfig, GPT2Config, GPT2LMHeadModel

from hf_gpt import HfGptConfig, HfGptForCausalLM

VOCAB, LAYERS, WIDTH, HEADS = 8192, 6, 384, 6


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":  # GPU work is asynchronous: wait for it before reading the clock
        torch.cuda.synchronize(device)


def models(context: int, width: int = WIDTH, device: str = "cpu") -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(0)
    ours = HfGptForCausalLM(HfGptConfig(
        vocab_size=VOCAB, n_layer=LAYERS, n_embd=width, n_head=HEADS, max_position_embeddings=context,
        position_embedding_type="learned", bos_token_id=0, eos_token_id=1, pad_token_id=2))
    gpt2 = GPT2LMHeadModel(GPT2Config(
        vocab_size=VOCAB, n_layer=LAYERS, n_embd=width, n_head=HEADS, n_positions=context, resid_pdrop=0.0,
        embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=1, pad_token_id=2))
    for model in (ours, gpt2):
        model.set_attn_implementation("sdpa")
    return ours.to(device), gpt2.to(device)


def train_tokens_per_second(models: list[torch.nn.Module], batch: int, context: int, steps: int) -> list[float]:
    """Median tokens/s of a full training step (forward, backward, AdamW) for each model.

    The models' steps are interleaved (ABAB..., then BABA...) so that a shared machine's slow spells hit both alike:
    measured one after the other, the same two models gave ratios from 0.99 to 1.27 on this 2-core box."""
    device = models[0].device
    ids = torch.randint(3, VOCAB, (batch, context), device=device)
    optimizers = [torch.optim.AdamW(m.parameters(), lr=1e-4) for m in models]
    times: list[list[float]] = [[] for _ in models]
    for step in range(steps + 2):  # two warm-up steps
        order = range(len(models)) if step % 2 == 0 else reversed(range(len(models)))
        for i in order:
            model, optimizer = models[i], optimizers[i]
            model.train()
            synchronize(device)
            start = time.perf_counter()
            model(ids, labels=ids).loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            synchronize(device)
            if step >= 2:
                times[i].append(time.perf_counter() - start)
    return [batch * context / statistics.median(t) for t in times]


@torch.no_grad()
def generate_tokens_per_second(runs: list[tuple[torch.nn.Module, bool | str, int]], new_tokens: int,
                               repeats: int) -> list[float]:
    """Median tokens/s of greedy `generate` for each (model, cache, batch), the runs interleaved as above.

    cache: True (the default dynamic KV cache), False (recompute everything each step) or "compiled" (static cache
    + torch.compile)."""
    times: list[list[float]] = [[] for _ in runs]
    for repeat in range(repeats):
        order = range(len(runs)) if repeat % 2 == 0 else reversed(range(len(runs)))
        for i in order:
            model, cache, batch = runs[i]
            model.eval()
            prompt = torch.randint(3, model.config.vocab_size, (batch, 8), generator=torch.Generator().manual_seed(i))
            prompt = prompt.to(model.device)
            kwargs = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, use_cache=bool(cache),
                          eos_token_id=None, pad_token_id=2)
            if cache == "compiled":
                kwargs.update(cache_implementation="static", compile_config=compile_config())
            if repeat == 0:  # warm-up; compiling needs the timed length, as the static cache is sized by it
                short = {} if cache == "compiled" else {"max_new_tokens": 4, "min_new_tokens": 4}
                model.generate(prompt, **{**kwargs, **short})
            synchronize(model.device)
            start = time.perf_counter()
            model.generate(prompt, **kwargs)
            synchronize(model.device)
            times[i].append(time.perf_counter() - start)
    return [runs[i][2] * new_tokens / statistics.median(t) for i, t in enumerate(times)]


def compile_config() -> CompileConfig:
    """transformers compiles the decoding step by itself only on a GPU; ask for it on any device."""
    config = CompileConfig(fullgraph=True, dynamic=False)
    config._compile_all_devices = True
    return config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer steps (a smoke run)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--compiled", action="store_true",
                        help="add a row for the static KV cache + torch.compile (compiles for a minute or more)")
    parser.add_argument("--batch", type=int, default=8, help="batch size of the second cache-vs-recompute row")
    args = parser.parse_args()
    steps, repeats, new_tokens = (3, 1, 64) if args.quick else (20, 3, 512)
    device = torch.device(args.device)

    ours, gpt2 = models(context=256, device=device)
    train_ours, train_gpt2 = train_tokens_per_second([ours, gpt2], batch=8, context=256, steps=steps)

    ours, gpt2 = models(context=1024, device=device)  # room for 512 new tokens
    narrow = models(context=1024, width=48, device=device)[0]  # same depth, ~no weights: the per-token overhead
    cached, cached_gpt2, cached_narrow = generate_tokens_per_second(
        [(ours, True, 1), (gpt2, True, 1), (narrow, True, 1)], new_tokens, repeats)
    # Recomputing is ~10x slower per run: one run each (its spread is small next to the ratio's).
    recompute, recompute_batch, cached_batch = generate_tokens_per_second(
        [(ours, False, 1), (ours, False, args.batch), (ours, True, args.batch)], new_tokens, 1)

    compiled_rows = []
    if args.compiled:
        (compiled,) = generate_tokens_per_second([(ours, "compiled", 1)], new_tokens, repeats)
        compiled_rows = [(f"generate {new_tokens} tokens, batch 1, tokens/s", "static cache + compile", compiled,
                          "recompute all", recompute, 10.0)]
    rows = [
        ("train step tokens/s", "HfGptForCausalLM", train_ours, "GPT2LMHeadModel", train_gpt2, 1.10),
        (f"generate {new_tokens} tokens, batch 1, tokens/s", "KV cache", cached, "recompute all", recompute, 10.0),
        (f"generate {new_tokens} tokens, batch {args.batch}, tokens/s", "KV cache", cached_batch, "recompute all",
         recompute_batch, 10.0),
        *compiled_rows,
        ("cached generate tokens/s", "HfGptForCausalLM", cached, "GPT2LMHeadModel", cached_gpt2, 1.0),
    ]
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} CPU threads"
    print(f"torch {torch.__version__}, {where}, "
          f"{LAYERS} layers x {WIDTH} wide x {HEADS} heads, vocab {VOCAB}\n")
    print("| measure | ours | value | reference | value | ratio | target |")
    print("|---|---|---:|---|---:|---:|---:|")
    for name, a, va, b, vb, target in rows:
        ratio = va / vb
        mark = "ok" if ratio >= target else "MISSED"
        print(f"| {name} | {a} | {va:,.0f} | {b} | {vb:,.0f} | {ratio:.2f}x | >= {target}x {mark} |")
    per_token, overhead = 1000 / cached, 1000 / cached_narrow
    print(f"\nBatch-1 cached decoding: {per_token:.1f} ms/token, of which {overhead:.1f} ms is per-token overhead "
          f"(generate + PyTorch dispatch: the same {LAYERS} layers 48 wide, {1000 / recompute:.0f} ms/token to "
          f"recompute); 10x would need {1000 / recompute / 10:.1f} ms/token.")


if __name__ == "__main__":
    main()
