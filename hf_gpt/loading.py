"""The one loader of models, configs and tokenizers: the CLI, every recipe, the demo, the report and the server load
through these functions, so the rules below hold everywhere:
- `trust_remote_code` is always passed as a bool (False unless the user asked): transformers then never asks its
  interactive `[y/N]` question, and a folder's own code runs only when asked for;
- a folder that is no model (missing, a file, no config.json, an unknown model_type, a LoRA adapter whose base is
  missing) and every loading failure (truncated weights, no tokenizer) end in one line naming the path and the fix;
- a LoRA adapter folder (`adapter_config.json`, as SFT with `use_peft` saves it) loads with its base model, merged.
"""

import contextlib
import json
import logging
from pathlib import Path

from huggingface_hub.errors import HFValidationError
from safetensors import SafetensorError

logger = logging.getLogger(__name__)

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")
REMOTE_CODE = ("it holds its own modelling code, which runs only when allowed (--trust-remote-code; the "
               "trust_remote_code argument in Python): read that code first")


class RemoteCodeRefused(ValueError):
    """A folder or repo whose loading needs its own code, which the user did not allow to run."""


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def check_model_source(path: str, what: str, trust_remote_code: bool = False) -> None:
    """A local-looking path must be a model folder transformers can load without running code it was not allowed
    to; anything else is taken as a Hub id."""
    local = Path(path)
    if local.is_dir():
        if (local / "adapter_config.json").is_file() and not (local / "config.json").is_file():
            return  # an adapter: load_model loads its base first
        if not (local / "config.json").is_file():
            raise FileNotFoundError(f"{path} has no config.json: it is not a saved model folder ({what}).")
        _check_model_type(local, what, trust_remote_code)
    elif local.exists():
        raise FileNotFoundError(f"{path} is a file, not a model folder ({what}): give the folder that holds "
                                "config.json.")
    elif path.startswith((".", "/", "~")) or path.count("/") > 1:
        raise FileNotFoundError(f"{path} is not a model folder ({what}): check the path, or give a Hub id user/name.")


def _check_model_type(folder: Path, what: str, trust_remote_code: bool) -> None:
    from transformers import CONFIG_MAPPING, __version__

    import hf_gpt  # noqa: F401  (registers hf_gpt with the Auto classes)

    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{folder}/config.json is not valid JSON ({_one_line(err)}): the folder is damaged "
                         f"({what}).") from None
    model_type = config.get("model_type") if isinstance(config, dict) else None
    if model_type in CONFIG_MAPPING:
        return
    if isinstance(config, dict) and config.get("auto_map"):
        if not trust_remote_code:
            raise RemoteCodeRefused(f"Cannot load {what} from {folder}: {REMOTE_CODE}")
        return
    raise ValueError(f"Cannot load {what} from {folder}: its config.json names model_type {model_type!r}, which "
                     f"neither transformers {__version__} nor hf_gpt knows, and it ships no code: check the folder, or "
                     "upgrade transformers.")


def _check_tokenizer_files(path: str, what: str) -> None:
    local = Path(path)
    if local.is_dir() and not any((local / name).is_file() for name in TOKENIZER_FILES):
        raise FileNotFoundError(f"{path} has no tokenizer (no tokenizer.json): save the tokenizer beside the model "
                                f"(tokenizer.save_pretrained) or give the folder of the one it was trained with "
                                f"({what}).")


def _from_pretrained(loader, path: str, what: str, trust_remote_code: bool, **kwargs):
    """The one call of transformers' loaders: `trust_remote_code` always given, errors as one line."""
    try:
        return loader.from_pretrained(path, trust_remote_code=bool(trust_remote_code), **kwargs)
    except (OSError, HFValidationError, ValueError, RuntimeError, SafetensorError, KeyError) as err:
        cause = _one_line(err)
        if "contains custom code" in cause or "trust_remote_code" in cause:
            raise RemoteCodeRefused(f"Cannot load {what} from {path}: {REMOTE_CODE}") from None
        raise ValueError(f"Cannot load {what} from {path}: {cause}") from None


def load_config(path: str, trust_remote_code: bool = False, what: str = "the model config", **kwargs):
    from transformers import AutoConfig

    path = str(path)
    check_model_source(path, what, trust_remote_code)
    return _from_pretrained(AutoConfig, path, what, trust_remote_code, **kwargs)


def load_tokenizer(path: str, trust_remote_code: bool = False, what: str = "the tokenizer", **kwargs):
    from transformers import AutoTokenizer

    path, local = str(path), Path(path)
    if not local.is_dir():
        check_model_source(path, what)  # one line for a local-looking path that is no folder; else a Hub id
    elif (local / "config.json").is_file():
        _check_model_type(local, what, trust_remote_code)
    _check_tokenizer_files(path, what)
    return _from_pretrained(AutoTokenizer, path, what, trust_remote_code, **kwargs)


def load_model(model_class, path: str, what: str = "the model", trust_remote_code: bool = False, **kwargs):
    """`model_class` loaded from `path` (with `kwargs`) under the rules above; a LoRA adapter folder is merged into its
    base model."""
    path = str(path)
    check_model_source(path, what, trust_remote_code)
    adapter = Path(path) / "adapter_config.json"
    if adapter.is_file() and not (Path(path) / "config.json").is_file():
        return _load_adapter(model_class, path, what, trust_remote_code, **kwargs)
    wants_info = kwargs.pop("output_loading_info", False)
    with _without_load_report():
        model, info = _from_pretrained(model_class, path, what, trust_remote_code,
                                       output_loading_info=True, **kwargs)
    if wants_info:  # the caller judges what is missing (a reward model must not lack its head)
        return model, info
    _report_loading(info, path)
    return model


NEW_HEADS = ("score", "classifier")  # heads a stage adds on top of a saved body and trains


def _report_loading(info: dict, path: str) -> None:
    """One plain line for a new head (the reward or classification stage trains it); the keys themselves for
    anything else that did not match the checkpoint."""
    missing = sorted(info.get("missing_keys") or [])
    heads = sorted({key.split(".")[0] for key in missing if key.split(".")[0] in NEW_HEADS})
    if heads:
        logger.warning("%s has no %s head: a new one, trained in this stage.", path, " or ".join(heads))
    odd = {"missing": [k for k in missing if k.split(".")[0] not in NEW_HEADS],
           "unexpected": sorted(info.get("unexpected_keys") or []),
           "mismatched": [str(k) for k in info.get("mismatched_keys") or []]}
    if any(odd.values()):
        logger.warning("%s: the model and its checkpoint differ: %s", path,
                       "; ".join(f"{kind} {keys[:8]}" for kind, keys in odd.items() if keys))


@contextlib.contextmanager
def _without_load_report():
    """transformers' load report (a table with ANSI colours, advice to train a new head) left out: `_report_loading`
    says it plainly. A filter, not a level: transformers reads its logger's level to decide other warnings."""
    modeling = logging.getLogger("transformers.modeling_utils")
    drop = lambda record: "LOAD REPORT" not in record.getMessage()
    modeling.addFilter(drop)
    try:
        yield
    finally:
        modeling.removeFilter(drop)


def _load_adapter(model_class, path: str, what: str, trust_remote_code: bool, **kwargs):
    settings = json.loads((Path(path) / "adapter_config.json").read_text())
    base = settings.get("base_model_name_or_path")
    if not base:
        raise ValueError(f"{path} is a LoRA adapter that names no base model (adapter_config.json): load it with "
                         "PEFT, naming the base model yourself.")
    try:
        model = load_model(model_class, base, f"the base model of the adapter {path}", trust_remote_code, **kwargs)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{path} is a LoRA adapter of {base}, which cannot be found ({err}); give the "
                                "adapter's merged/ folder, or put its base model back at that path.") from None
    output_info = isinstance(model, tuple)
    model, info = model if output_info else (model, None)
    try:
        merged = _merge_adapter(model, Path(path), settings)
    except (OSError, ValueError, RuntimeError, SafetensorError, KeyError, TypeError) as err:
        raise ValueError(f"Cannot load {what} from the adapter {path}: {_one_line(err)}") from None
    return (merged, info) if output_info else merged


def _merge_adapter(model, folder: Path, settings: dict):
    """The adapter's JSON settings and safetensors weights put on the base model (loaded above, under the caller's
    trust_remote_code) and merged into it: nothing from the adapter folder runs or is unpickled, and a weight the
    model has no place for is an error, not a warning."""
    from peft import PeftConfig, get_peft_model, set_peft_model_state_dict
    from safetensors.torch import load_file

    settings = {k: v for k, v in settings.items() if k != "runtime_config"}
    model = get_peft_model(model, PeftConfig.from_peft_type(**settings))
    unexpected = set_peft_model_state_dict(model, load_file(folder / "adapter_model.safetensors")).unexpected_keys
    if unexpected:
        raise ValueError(f"the adapter has weights the model has no place for ({', '.join(sorted(unexpected)[:3])})")
    return model.merge_and_unload()


def load_model_and_tokenizer(model_class, path: str, what: str = "the model", trust_remote_code: bool = False,
                             tokenizer_kwargs: dict | None = None, **kwargs) -> tuple:
    """Tokenizer and model of one folder or Hub id, checked to match (every token id has an embedding)."""
    check_model_source(str(path), what, trust_remote_code)  # "not a model folder" before "no tokenizer"
    tokenizer = load_tokenizer(path, trust_remote_code, **(tokenizer_kwargs or {}))
    model = load_model(model_class, path, what, trust_remote_code, **kwargs)
    check_vocab(tokenizer, model if not isinstance(model, tuple) else model[0], path)
    return tokenizer, model


def check_safetensors(path: Path) -> None:
    """A safetensors file starts with an 8-byte little-endian header length and that many bytes of JSON; anything
    else (a pickle renamed .safetensors, a truncated file) is refused before upload."""
    with path.open("rb") as f:
        head = f.read(8)
        size = int.from_bytes(head, "little") if len(head) == 8 else -1
        ok = 0 < size <= min(path.stat().st_size - 8, 100_000_000)
        if ok:
            try:
                header = json.loads(f.read(size))
                ok = isinstance(header, dict)
                end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
                ok = ok and 8 + size + end <= path.stat().st_size
            except (ValueError, KeyError, TypeError, IndexError):
                ok = False
    if not ok:
        raise ValueError(f"{path} is not a valid safetensors file (a renamed pickle, or truncated): save the model "
                         "again.")


def check_weights(folder: str | Path) -> None:
    """A local model folder's weights are whole safetensors files (their headers read, not their tensors)."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    weights = sorted(folder.glob("*.safetensors"))
    if not weights and not (folder / "pytorch_model.bin").is_file():
        raise ValueError(f"{folder} has no weights (no model.safetensors): it is a config without a model.")
    for path in weights:
        check_safetensors(path)


def check_vocab(tokenizer, model, path: str) -> None:
    """Token ids past the embedding table fail deep inside a forward pass (IndexError at step 0): say so now."""
    if len(tokenizer) > model.config.vocab_size:
        raise ValueError(f"The tokenizer of {path} has {len(tokenizer)} tokens but the model's vocab_size is "
                         f"{model.config.vocab_size}: use the tokenizer the model was trained with.")


def load_score_model(path: str, role: str, trust_remote_code: bool = False):
    """A reward or value model: a sequence-classification model whose score head was trained (saved in the folder).
    A causal LM folder (the SFT model, say) would get a freshly initialised head: PPO would train on noise."""
    from transformers import AutoModelForSequenceClassification

    model, info = load_model(AutoModelForSequenceClassification, path, f"the {role}", trust_remote_code,
                             num_labels=1, output_loading_info=True)
    if any(key.split(".")[0] == "score" for key in info["missing_keys"]):
        raise ValueError(f"{path} has no trained score head (score.weight is not in its weights), so it cannot be the "
                         f"{role}: give a reward model folder (the output of recipes/reward.py).")
    return model


def load_reward_function(path: str):
    """`package.module:function` or `package.module.function` → the function f(prompts, completions, **kw). Code the
    user named explicitly, imported as any Python module is."""
    import importlib

    module, _, name = path.replace(":", ".").rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as err:
        raise ValueError(f"Cannot import reward function {path!r}: {err}. Use 'package.module:function'.") from None
