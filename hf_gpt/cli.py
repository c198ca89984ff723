"""The `hf-gpt` command line: `hf-gpt tokenizer train ...`, `hf-gpt generate ...`."""

import argparse
import sys
from pathlib import Path


def _tokenizer_train(args: argparse.Namespace) -> None:
    from .tokenizer import train_tokenizer

    tokenizer = train_tokenizer(args.files, vocab_size=args.vocab_size, min_frequency=args.min_frequency,
                                model_max_length=args.model_max_length, show_progress=True)
    tokenizer.save_pretrained(args.out)
    print(f"Saved a {len(tokenizer)}-token byte-level BPE tokenizer to {args.out}")


def _generate(args: argparse.Namespace) -> None:
    from .generation import generate_text

    for text in generate_text(args.model, args.prompt, max_new_tokens=args.max_new_tokens,
                              temperature=args.temperature, top_p=args.top_p, top_k=args.top_k, seed=args.seed):
        print(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hf-gpt", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

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
    generate.add_argument("--max-new-tokens", type=int, default=64)
    generate.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    generate.add_argument("--top-p", type=float, default=1.0, help="1.0 disables nucleus sampling")
    generate.add_argument("--top-k", type=int, default=0, help="0 disables top-k")
    generate.add_argument("--seed", type=int, default=None)
    generate.set_defaults(func=_generate)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (FileNotFoundError, ValueError) as err:  # bad input: one clear line, no traceback
        sys.exit(f"hf-gpt: error: {err}")


if __name__ == "__main__":
    main()
