"""Loading a stage's model and tokenizer with one-line errors: a missing or empty folder, a truncated weights file,
a tokenizer larger than the model's vocabulary, or a folder without a trained score head where one is needed."""

from pathlib import Path

from huggingface_hub.errors import HFValidationError
from safetensors import SafetensorError


def check_model_source(path: str, what: str) -> None:
    """A local-looking path must be a saved model folder; anything else is taken as a Hub id."""
    local = Path(path)
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise FileNotFoundError(f"{path} has no config.json: it is not a saved model folder ({what}).")
    elif local.exists() or path.startswith((".", "/", "~")) or path.count("/") > 1:
        raise FileNotFoundError(f"{path} is not a model folder ({what}): check the path, or give a Hub id user/name.")


def load_pretrained(loader, path: str, what: str, **kwargs):
    """`loader.from_pretrained(path, **kwargs)`, any failure turned into one line naming the path and the cause."""
    check_model_source(path, what)
    try:
        return loader.from_pretrained(path, **kwargs)
    except (OSError, HFValidationError, ValueError, RuntimeError, SafetensorError) as err:
        cause = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if "contains custom code" in cause:
            cause = ("it holds its own modelling code, which runs only with --trust-remote-code (trust_remote_code="
                     "True): read that code first")
        raise ValueError(f"Cannot load {what} from {path}: {cause}") from None


def check_vocab(tokenizer, model, path: str) -> None:
    """Token ids past the embedding table fail deep inside a forward pass (IndexError at step 0): say so now."""
    if len(tokenizer) > model.config.vocab_size:
        raise ValueError(f"The tokenizer of {path} has {len(tokenizer)} tokens but the model's vocab_size is "
                         f"{model.config.vocab_size}: use the tokenizer the model was trained with.")


def load_score_model(path: str, role: str, trust_remote_code: bool = False):
    """A reward or value model: a sequence-classification model whose score head was trained (saved in the folder).
    A causal LM folder (the SFT model, say) would get a freshly initialised head: PPO would train on noise."""
    from transformers import AutoModelForSequenceClassification

    model, info = load_pretrained(AutoModelForSequenceClassification, path, f"the {role}", num_labels=1,
                                  output_loading_info=True, trust_remote_code=trust_remote_code)
    if any(key.split(".")[0] == "score" for key in info["missing_keys"]):
        raise ValueError(f"{path} has no trained score head (score.weight is not in its weights), so it cannot be the "
                         f"{role}: give a reward model folder (the output of recipes/reward.py).")
    return model
