"""llama.cpp runs `hf-gpt export-gguf` files as transformers runs the folders: same prompt tokens, same greedy tokens,
first-step logits within a small tolerance (llama.cpp's GELU is the tanh approximation), in English and Korean.

    python bench/gguf_check.py runs/world/base runs/world/ppo [--dtype f32] [--out bench/results/gguf_check.md]

llama.cpp is reached through llama-cpp-python's ctypes bindings (`llama_cpp`), either installed or found beside a
library built by bench/gguf_check.sh (LLAMA_CPP_LIB_PATH and PYTHONPATH set there). Exits 1 when any prompt differs.
"""

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForCausalLM

from hf_gpt.export_gguf import export_gguf
from hf_gpt.loading import load_model_and_tokenizer

# Plain text continues the base model's documents; chat prompts go through the chat template (both asked of every
# model, so the tokenizer's special tokens are checked on the base model too).
TEXT_PROMPTS = ("The capital of Korea is", "대한민국의 수도는", "3 plus 4 is")
CHAT_PROMPTS = ("What is the capital of Korea?", "3 더하기 4는 얼마입니까?", "What is 2 plus 5?")
LOGIT_TOLERANCE = 0.02


def llama_greedy(llm, ids: list[int], max_new_tokens: int, eos: int) -> tuple[list[int], np.ndarray]:
    llm.reset()
    llm.eval(ids)
    first = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32)
    new: list[int] = []
    for _ in range(max_new_tokens):
        token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        if token == eos:
            break
        new.append(token)
        if llm.n_tokens >= llm.n_ctx():
            break
        llm.eval([token])
    return new, first


def transformers_greedy(model, ids: list[int], max_new_tokens: int, eos: int) -> tuple[list[int], np.ndarray]:
    room = model.config.max_position_embeddings - len(ids)
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=min(max_new_tokens, room), do_sample=False,
                             eos_token_id=eos, pad_token_id=eos, output_logits=True, return_dict_in_generate=True)
    new = out.sequences[0, len(ids):].tolist()
    return [t for t in new if t != eos], out.logits[0][0].float().numpy()


def check_folder(folder: str, dtype: str, max_new_tokens: int) -> list[dict]:
    from llama_cpp import Llama

    tokenizer, model = load_model_and_tokenizer(AutoModelForCausalLM, folder, "the model to check")
    model.eval()
    eos = tokenizer.eos_token_id
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path = export_gguf(folder, Path(tmp) / "model.gguf", dtype=dtype)
        llm = Llama(str(path), n_ctx=model.config.max_position_embeddings, logits_all=True, verbose=False,
                    n_threads=2, n_batch=model.config.max_position_embeddings)
        prompts = [(text, text) for text in TEXT_PROMPTS] + [
            (question, tokenizer.apply_chat_template([{"role": "user", "content": question}],
                                                     add_generation_prompt=True, tokenize=False))
            for question in CHAT_PROMPTS]
        for shown, text in prompts:
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            llama_ids = llm.tokenize(text.encode(), add_bos=False, special=True)
            ours, ours_logits = transformers_greedy(model, ids, max_new_tokens, eos)
            theirs, their_logits = llama_greedy(llm, ids, max_new_tokens, eos)
            rows.append({"model": Path(folder).name, "prompt": shown, "chat": shown != text,
                         "same_prompt_tokens": ids == llama_ids, "same_greedy_tokens": ours == theirs,
                         "new_tokens": len(ours), "max_logit_diff": float(np.abs(ours_logits - their_logits).max()),
                         "reply": tokenizer.decode(theirs, skip_special_tokens=True)})
        llm.close()
    return rows


def table(rows: list[dict], dtype: str) -> str:
    lines = [f"| model | prompt ({dtype}) | prompt tokens equal | greedy tokens equal | new tokens | "
             "max first-step logit diff | llama.cpp's reply |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        prompt = ("chat: " if r["chat"] else "") + r["prompt"]
        lines.append(f"| {r['model']} | {prompt} | {'yes' if r['same_prompt_tokens'] else '**no**'} | "
                     f"{'yes' if r['same_greedy_tokens'] else '**no**'} | {r['new_tokens']} | "
                     f"{r['max_logit_diff']:.4f} | {r['reply'][:60]!r} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+")
    parser.add_argument("--dtype", default="f32", choices=("f32", "f16", "q8_0"))
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--out", type=Path, default=None, help="also write the table (markdown) here")
    args = parser.parse_args()
    rows = [row for folder in args.folders for row in check_folder(folder, args.dtype, args.max_new_tokens)]
    text = table(rows, args.dtype)
    print(text)
    if args.out:
        import datetime

        import llama_cpp

        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(f"# `python bench/gguf_check.py {' '.join(args.folders)} --dtype {args.dtype}` — "
                            f"{datetime.date.today()}, llama.cpp of llama-cpp-python {llama_cpp.__version__}\n\n"
                            f"{text}\n")
    exact = args.dtype == "f32"  # f16/q8_0 round the weights: tokens may part ways late in a reply
    bad = [r for r in rows if not r["same_prompt_tokens"]
           or (exact and (not r["same_greedy_tokens"] or r["max_logit_diff"] > LOGIT_TOLERANCE))]
    print(f"{len(rows) - len(bad)} of {len(rows)} prompts agree" + (f"; {len(bad)} differ" if bad else ""))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
