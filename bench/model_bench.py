"""Model speed, measured in one run against references of identical size (a benchmark, not a test).

    python bench/model_bench.py [--quick]

1. training-step tokens/s: HfGptForCausalLM vs transformers' GPT2LMHeadModel (6 layers, 384 wide, 6 heads,
   context 256, learned positions, no dropout, SDPA both; each with its default activation: ours exact GELU, one
   fused kernel; GPT-2 `gelu_new`, the tanh approximation in five kernels)              target >= 1.10x
2. generate tokens/s for 512 new tokens: KV cache vs recomputing the whole sequence each step   target >= 10x
3. cached generate tokens/s: ours vs GPT2LMHeadModel's                                     target >= 1.0x
"""

import argparse
import statistics
import time

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from hf_gpt import HfGptConfig, HfGptForCausalLM

VOCAB, LAYERS, WIDTH, HEADS = 8192, 6, 384, 6


def models(context: int) -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(0)
    ours = HfGptForCausalLM(HfGptConfig(
        vocab_size=VOCAB, n_layer=LAYERS, n_embd=WIDTH, n_head=HEADS, max_position_embeddings=context,
        position_embedding_type="learned", bos_token_id=0, eos_token_id=1, pad_token_id=2))
    gpt2 = GPT2LMHeadModel(GPT2Config(
        vocab_size=VOCAB, n_layer=LAYERS, n_embd=WIDTH, n_head=HEADS, n_positions=context, resid_pdrop=0.0,
        embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=1, pad_token_id=2))
    for model in (ours, gpt2):
        model.set_attn_implementation("sdpa")
    return ours, gpt2


def train_tokens_per_second(model: torch.nn.Module, batch: int, context: int, steps: int) -> float:
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(3, VOCAB, (batch, context))
    times = []
    for step in range(steps + 2):  # two warm-up steps
        start = time.perf_counter()
        model(ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step >= 2:
            times.append(time.perf_counter() - start)
    return batch * context / statistics.median(times)


@torch.no_grad()
def generate_tokens_per_second(model: torch.nn.Module, new_tokens: int, use_cache: bool, repeats: int,
                               batch: int = 1) -> float:
    model.eval()
    prompt = torch.randint(3, VOCAB, (batch, 8))
    kwargs = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, use_cache=use_cache,
                  eos_token_id=None, pad_token_id=2)
    model.generate(prompt, **{**kwargs, "max_new_tokens": 4, "min_new_tokens": 4})  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model.generate(prompt, **kwargs)
        times.append(time.perf_counter() - start)
    return batch * new_tokens / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer steps (a smoke run)")
    args = parser.parse_args()
    steps, repeats, new_tokens = (3, 1, 64) if args.quick else (10, 3, 512)
    torch.set_num_threads(torch.get_num_threads())

    ours, gpt2 = models(context=256)
    train_ours = train_tokens_per_second(ours, batch=8, context=256, steps=steps)
    train_gpt2 = train_tokens_per_second(gpt2, batch=8, context=256, steps=steps)

    ours, gpt2 = models(context=1024)  # room for 512 new tokens
    cached = generate_tokens_per_second(ours, new_tokens, use_cache=True, repeats=repeats)
    recompute = generate_tokens_per_second(ours, new_tokens, use_cache=False, repeats=1)
    cached_gpt2 = generate_tokens_per_second(gpt2, new_tokens, use_cache=True, repeats=repeats)
    # Batch 1 decoding on a CPU is bound by reading the weights once per token; a batch of 8 shares that read.
    cached8 = generate_tokens_per_second(ours, new_tokens, use_cache=True, repeats=1, batch=8)
    recompute8 = generate_tokens_per_second(ours, new_tokens, use_cache=False, repeats=1, batch=8)

    rows = [
        ("train step tokens/s", "HfGptForCausalLM", train_ours, "GPT2LMHeadModel", train_gpt2, 1.10),
        (f"generate {new_tokens} tokens, batch 1, tokens/s", "KV cache", cached, "recompute all", recompute, 10.0),
        (f"generate {new_tokens} tokens, batch 8, tokens/s", "KV cache", cached8, "recompute all", recompute8, 10.0),
        ("cached generate tokens/s", "HfGptForCausalLM", cached, "GPT2LMHeadModel", cached_gpt2, 1.0),
    ]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{LAYERS} layers x {WIDTH} wide x {HEADS} heads, vocab {VOCAB}\n")
    print("| measure | ours | value | reference | value | ratio | target |")
    print("|---|---|---:|---|---:|---:|---:|")
    for name, a, va, b, vb, target in rows:
        ratio = va / vb
        mark = "ok" if ratio >= target else "MISSED"
        print(f"| {name} | {a} | {va:,.0f} | {b} | {vb:,.0f} | {ratio:.2f}x | >= {target}x {mark} |")


if __name__ == "__main__":
    main()
