"""The `hf-gpt` command line: `hf-gpt tokenizer train`, `hf-gpt generate`, `hf-gpt chat`, `hf-gpt push`, `hf-gpt serve`,
`hf-gpt eval`, `hf-gpt export-gguf`,
and the training recipes `hf-gpt pretrain|sft|reward|ppo|grpo|rloo|dpo|mlm|classify|translate` (the same as
`python recipes/<stage>.py`, for an installed package without the repository)."""

import argparse
import sys
from pathlib import Path

from .chat import CHAT_COMMANDS
from .recipe_utils import RECIPES, run_cli, run_recipe


def _tokenizer_train(args: argparse.Namespace) -> None:
    from .tokenizer import train_tokenizer

    tokenizer = train_tokenizer(args.files, vocab_size=args.vocab_size, min_frequency=args.min_frequency,
                                model_max_length=args.model_max_length, show_progress=True)
    tokenizer.save_pretrained(args.out)
    print(f"Saved a {len(tokenizer)}-token byte-level BPE tokenizer to {args.out}")


def _sampling(args: argparse.Namespace) -> dict:
    return dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                repetition_penalty=args.repetition_penalty)


def _generate(args: argparse.Namespace) -> None:
    from .generation import generate_text

    texts = generate_text(args.model, args.prompt, seed=args.seed, stream=args.stream,
                          trust_remote_code=args.trust_remote_code, **_sampling(args))
    if not args.stream:
        for text in texts:
            print(text)


def _chat(args: argparse.Namespace) -> None:
    from .generation import chat_loop

    if args.seed is not None:
        import torch

        torch.manual_seed(args.seed)
    chat_loop(args.model, args.system, trust_remote_code=args.trust_remote_code, **_sampling(args))


def _export_gguf(args: argparse.Namespace) -> None:
    from .export_gguf import export_gguf

    out = export_gguf(args.folder, args.out, dtype=args.dtype, trust_remote_code=args.trust_remote_code)
    print(f"Wrote {out} ({out.stat().st_size / 2**20:.1f} MiB, {args.dtype}): chat with it in llama.cpp with "
          f"llama-cli -m {out} --jinja -cnv")


def _eval(args: argparse.Namespace) -> None:
    from .eval_harness import evaluate, quiet_harness
    from .hub import lm_eval_table

    quiet_harness()
    report = evaluate(args.model, args.tasks, limit=args.limit, batch_size=args.batch_size,
                      apply_chat_template=args.apply_chat_template, num_fewshot=args.num_fewshot,
                      trust_remote_code=args.trust_remote_code, output_dir=args.output_dir)
    print(lm_eval_table(args.output_dir or args.model) if (args.output_dir or Path(args.model).is_dir()) else report)


def _push(args: argparse.Namespace) -> None:
    from .hub import push_folder

    url = push_folder(args.folder, args.repo_id, private=args.private, revision=args.revision, timeout=args.timeout)
    print(f"Pushed {args.folder} to {args.repo_id}: {url}")


class Parser(argparse.ArgumentParser):
    """Every `--dashed-option` is also accepted as `--dashed_option`, the spelling of the recipes' flags."""

    def add_argument(self, *names, **kwargs):
        aliases = [n.replace("-", "_").replace("__", "--", 1) for n in names if n.startswith("--") and "-" in n[2:]]
        return super().add_argument(*names, *aliases, **kwargs)


def _add_sampling(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=0.7, help="0 = greedy; low for facts, high for variety")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling; 1.0 = off")
    parser.add_argument("--top-k", type=int, default=0, help="0 = off")
    parser.add_argument("--repetition-penalty", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=None, help="same seed, same text")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="run modelling code from the folder or repo (off by default, as in transformers)")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="hf-gpt", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    tokenizer = commands.add_parser("tokenizer", help="byte-level BPE tokenizer").add_subparsers(
        dest="action", required=True)
    train = tokenizer.add_parser("train", help="train a byte-level BPE on text files")
    train.add_argument("--files", nargs="+", type=Path, required=True, help="UTF-8 text files")
    train.add_argument("--vocab-size", type=int, default=8192)
    train.add_argument("--min-frequency", type=int, default=2)
    train.add_argument("--model-max-length", type=int, default=1024)
    train.add_argument("--out", type=Path, required=True, help="folder to save the tokenizer to")
    train.set_defaults(func=_tokenizer_train)

    generate = commands.add_parser("generate", help="continue a prompt with a trained model")
    generate.add_argument("model", help="a saved folder or a Hub id")
    generate.add_argument("prompt")
    generate.add_argument("--stream", action="store_true", help="print tokens as they come")
    _add_sampling(generate)
    generate.set_defaults(func=_generate)

    chat = commands.add_parser("chat", help="a multi-turn chat with a system prompt",
                               description=f"A multi-turn chat. Type a message and Enter; {CHAT_COMMANDS}. The "
                               "oldest turns are dropped (with a note) when the conversation outgrows the model's "
                               "context.")
    chat.add_argument("model", help="a saved folder or a Hub id")
    chat.add_argument("--system", default=None, help="a system prompt (default: none)")
    _add_sampling(chat)
    chat.set_defaults(func=_chat)

    push = commands.add_parser("push", help="upload a saved folder (any stage) to the Hub with a model card")
    push.add_argument("folder", type=Path)
    push.add_argument("repo_id", help="user/name")
    push.add_argument("--private", action="store_true")
    push.add_argument("--revision", default=None, help="a branch to push to (created if missing)")
    push.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the Hub's answer (default 60)")
    push.set_defaults(func=_push)

    evaluate = commands.add_parser(
        "eval", help="score a model with lm-evaluation-harness (results beside it and in its model card)",
        description="Score a saved model with lm-evaluation-harness: hf-gpt's own tasks (world_facts for base "
        "models, world_chat for chat models, klue_nli_ko and nsmc_ko from ../shared/data) or any task the harness "
        "knows (hellaswag, arc_easy, lambada_openai, kobest_boolq: downloaded from the Hub). Results go to "
        "lm_eval_results.json and README.md (model-index) in the folder.")
    evaluate.add_argument("model", help="a saved folder (or a Hub id, with --output-dir)")
    evaluate.add_argument("--tasks", nargs="+", required=True, help="task or tag names, e.g. world_chat hellaswag")
    evaluate.add_argument("--limit", type=float, default=None, help="at most this many examples per task "
                          "(a fraction below 1: that share); for a quick look, not a result")
    evaluate.add_argument("--batch-size", type=int, default=16)
    evaluate.add_argument("--num-fewshot", type=int, default=None, help="examples in each prompt (task default)")
    evaluate.add_argument("--apply-chat-template", action="store_true",
                          help="ask the harness's tasks through the chat template (hf-gpt's chat tasks always are)")
    evaluate.add_argument("--output-dir", default=None, help="where results go (default: the model folder)")
    evaluate.add_argument("--trust-remote-code", action="store_true",
                          help="run modelling code from the folder or repo (off by default, as in transformers)")
    evaluate.set_defaults(func=_eval)

    export = commands.add_parser("export-gguf", help="write a decoder folder as a GGUF file for llama.cpp/Ollama",
                                 description="The model, its tokenizer and chat template as one GGUF file that "
                                 "llama.cpp runs (GPT-2's graph; RoPE models as GPT-NeoX's).")
    export.add_argument("folder", help="a saved decoder folder (base, SFT, PPO), a LoRA adapter folder or a Hub id")
    export.add_argument("out", type=Path, help="the .gguf file to write")
    export.add_argument("--dtype", choices=("f32", "f16", "q8_0"), default="f32",
                        help="weight matrices' type (norms, biases, positions stay f32); q8_0 is ~4x smaller")
    export.add_argument("--trust-remote-code", action="store_true",
                        help="run modelling code from the folder or repo (off by default, as in transformers)")
    export.set_defaults(func=_export_gguf)

    commands.add_parser("serve", help="transformers serve (OpenAI-compatible) for hf_gpt models; "
                                      "takes transformers serve's options", add_help=False)
    for stage in RECIPES:
        commands.add_parser(stage, help=f"the {stage} recipe: --config <preset or YAML> and any config field as a "
                                        f"flag (as recipes/{stage}.py)", add_help=False)
    return parser


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["serve"]:  # everything after `serve` is transformers serve's own options
        from .serve import main as serve

        sys.exit(serve(argv[1:]))
    if argv[:1] and argv[0] in RECIPES:  # the recipe's own parser (TrlParser) reads the rest
        run_recipe(argv[0], argv[1:])
        return
    args = build_parser().parse_args(argv)
    run_cli(lambda: args.func(args), prefix="hf-gpt: error")  # bad input, Ctrl-C, a full disk: one line


if __name__ == "__main__":
    main()
