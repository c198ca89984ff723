"""`hf-gpt serve`: transformers' own OpenAI-compatible server (`transformers serve`), able to load hf_gpt models.

transformers 5.24's `serve` picks the model class with `getattr(transformers, config.architectures[0])`, which fails
for every remote-code model, `--trust-remote-code` or not. This launcher puts our classes where that lookup finds
them and then runs the unchanged `transformers serve` command: the server itself is transformers', not ours.
Chat with it through `transformers chat <model> http://HOST:PORT` or any OpenAI client.
"""

import sys


def expose_classes_to_transformers() -> None:
    import transformers

    import hf_gpt

    for name in ("HfGptForCausalLM", "HfGptForSequenceClassification", "HfGptModel", "HfGptConfig"):
        setattr(transformers, name, getattr(hf_gpt, name))


def main(argv: list[str] | None = None) -> int:
    from transformers.cli.transformers import main as transformers_cli

    expose_classes_to_transformers()
    sys.argv = ["transformers", "serve", *(sys.argv[1:] if argv is None else argv)]
    return transformers_cli()


if __name__ == "__main__":
    sys.exit(main())
