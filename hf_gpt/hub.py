"""Share any stage on the Hub: weights (safetensors only), config with the full auto_map, code files, tokenizer and
chat template, and a model card rendered from `model_cards/<stage>.md.j2` with valid Hub metadata.

Design choices:
- One atomic commit (`create_commit`), built from the folder's files plus the card in memory: the local folder is
  never modified, so a failed upload leaves nothing half-written behind.
- The token is checked (`whoami`) before any work; it is never printed or logged.
- Pickle files (training_args.bin, optimizer states, *.pt) and checkpoints are never uploaded.
"""

import json
import math
from importlib.resources import files
from pathlib import Path

import jinja2
from huggingface_hub import CommitOperationAdd, EvalResult, HfApi, ModelCard, ModelCardData
from huggingface_hub.errors import HfHubHTTPError, HFValidationError
from huggingface_hub.utils import validate_repo_id

from .loading import check_safetensors
from .run_folder import SUMMARY, write_json

TEMPLATES = "hf_gpt.model_cards"  # the top-level model_cards/, shipped in the wheel as package data
STAGES = ("base", "sft", "reward", "ppo")
LM_EVAL_RESULTS = "lm_eval_results.json"  # written by `hf-gpt eval` beside the model
# The files a saved hf_gpt folder is made of; nothing else is uploaded (no pickles, checkpoints, logs or stray files).
KNOWN_FILES = ("config.json", "generation_config.json", "model.safetensors", "model.safetensors.index.json",
               "adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "tokenizer_config.json",
               "special_tokens_map.json", "chat_template.jinja", "modeling_hf_gpt.py", "configuration_hf_gpt.py",
               "training_summary.json", "reward_metrics.json", "samples.md", "held_out_translations.jsonl",
               "curves.png", "ppo_curves.png", LM_EVAL_RESULTS)
SHARDS = "model-*-of-*.safetensors"
SUBFOLDERS = ("value_model", "merged")  # PPO's value model, SFT's LoRA-merged model: saved folders themselves
METRICS = {  # stage → (summary key, metric type, metric name)
    "base": ("val_bpb", "bpb", "validation bits per byte"),
    "sft": ("eval_loss", "loss", "held-out loss on response tokens"),
    "reward": ("pairwise_accuracy", "accuracy", "held-out pairwise accuracy"),
    "ppo": ("score_last", "reward", "mean reward-model score (last steps)"),
    "grpo": ("reward", "reward", "mean reward (last logged step)"),
    "rloo": ("reward", "reward", "mean reward (last logged step)"),
    "dpo": ("loss", "loss", "DPO loss (last logged step)"),
    "mlm": ("eval_masked_accuracy", "accuracy", "held-out masked-token accuracy"),
    "classifier": ("accuracy", "accuracy", "held-out accuracy"),
    "seq2seq": ("held_out_chrf", "chrf", "held-out chrF"),
}
# The Hub's task of each stage (text-generation unless named here).
PIPELINE_TAGS = {"reward": "text-classification", "classifier": "text-classification", "mlm": "fill-mask",
                 "seq2seq": "translation"}
ALIGNED = {"grpo": "GRPO", "rloo": "RLOO", "dpo": "DPO"}  # TRL's methods: one card template for the three


def render_template(name: str, trim_blocks: bool = False, **values) -> str:
    """A template of the package's `model_cards/` (model cards and the demo's report), rendered with Jinja."""
    env = jinja2.Environment(loader=jinja2.FunctionLoader(lambda n: (files(TEMPLATES) / n).read_text("utf-8")),
                             keep_trailing_newline=True, trim_blocks=trim_blocks)
    env.filters["pyrepr"] = repr
    return env.get_template(name).render(**values)


def write_summary(folder: str | Path, stage: str, metrics: dict, data: list[str] | str | None = None,
                  base_model: str | None = None, steps: int | None = None, throughput: dict | None = None) -> None:
    """What the model card needs to know, saved next to the weights by every stage."""
    summary = {"stage": stage, "metrics": metrics, "data": data, "base_model": base_model, "steps": steps,
               "throughput": throughput}
    write_json(Path(folder) / SUMMARY, summary)  # atomic, and last: it marks the folder finished


def read_summary(folder: Path) -> dict:
    path = folder / SUMMARY
    if path.exists():
        return json.loads(path.read_text())
    config = json.loads((folder / "config.json").read_text())
    kinds = {"SequenceClassification": "reward", "MaskedLM": "mlm", "ConditionalGeneration": "seq2seq"}
    stage = next((s for k, s in kinds.items() if any(k in a for a in config.get("architectures") or [])), "base")
    return {"stage": "ppo" if (folder / "value_model").is_dir() else stage, "metrics": {}}


def render_card(folder: str | Path, repo_id: str) -> str:
    """The README.md for a saved folder: YAML metadata (library_name, tags, datasets, base_model, license,
    model-index with the stage's metric) and a body from the stage's Jinja template."""
    folder = Path(folder)
    summary = read_summary(folder)
    stage = summary["stage"]
    config = json.loads((folder / "config.json").read_text())
    key, metric_type, metric_name = METRICS[stage]
    value = summary["metrics"].get(key)
    data = summary.get("data")
    hub_datasets = [d for d in ([data] if isinstance(data, str) else data or []) if _is_hub_id(d)]
    eval_results = None
    if isinstance(value, (int, float)):
        eval_results = [EvalResult(task_type=PIPELINE_TAGS.get(stage, "text-generation"),
                                   dataset_type=hub_datasets[0] if hub_datasets else "local",
                                   dataset_name=hub_datasets[0] if hub_datasets else "held-out split",
                                   metric_type=metric_type, metric_name=metric_name, metric_value=float(value))]
    eval_results = (eval_results or []) + _lm_eval_results(folder, PIPELINE_TAGS.get(stage, "text-generation"))
    base_model = summary.get("base_model")
    card_data = ModelCardData(
        library_name="transformers", license="apache-2.0", pipeline_tag=PIPELINE_TAGS.get(stage, "text-generation"),
        tags=["hf-gpt", "custom_code", stage], datasets=hub_datasets or None,
        base_model=base_model if base_model and _is_hub_id(base_model) else None, model_name=repo_id,
        eval_results=eval_results or None)
    weights = folder / "model.safetensors"
    num_parameters = _count_parameters(weights) if weights.exists() else 0
    template = "aligned.md.j2" if stage in ALIGNED else f"{stage}.md.j2"
    text = render_template(template, method=ALIGNED.get(stage),
        card_data=card_data.to_yaml(), repo_id=repo_id, config=_Namespace(config), num_parameters=num_parameters,
        training=_training_text(summary), evaluation=lm_eval_table(folder))
    ModelCard(text)  # parses the YAML header: raises if it is not valid metadata
    return text


def read_lm_eval(folder: Path) -> dict | None:
    path = Path(folder) / LM_EVAL_RESULTS
    return json.loads(path.read_text()) if path.is_file() else None


def lm_eval_rows(tasks: dict) -> list[dict]:
    """One row per task and metric of `hf-gpt eval`'s results: value ± standard error, examples."""
    return [{"task": task, "metric": metric,
             "value": f"{v['value']:.3f}" + (f" ± {v['stderr']:.3f}" if v.get("stderr") is not None else ""),
             "examples": entry["n"]} for task, entry in tasks.items() for metric, v in entry["metrics"].items()]


def lm_eval_table(folder: Path) -> str:
    """`hf-gpt eval`'s results in the folder, as markdown."""
    report = read_lm_eval(folder)
    if not report:
        return ""
    rows = lm_eval_rows(report["tasks"])
    return "\n".join(["| task | metric | value | examples |", "|---|---|---|---|",
                      *(f"| {r['task']} | {r['metric']} | {r['value']} | {r['examples']} |" for r in rows)])


def _lm_eval_results(folder: Path, task_type: str) -> list[EvalResult]:
    """lm-evaluation-harness's scores (LM_EVAL_RESULTS) as model-index results, one per task and metric."""
    report = read_lm_eval(folder)
    if not report:
        return []
    return [EvalResult(task_type=task_type, dataset_type=task, dataset_name=task, metric_type=metric,
                       metric_name=f"{metric} (lm-evaluation-harness {report.get('lm_eval_version', '')})".strip(),
                       metric_value=value["value"], source_name="lm-evaluation-harness",
                       source_url="https://github.com/EleutherAI/lm-evaluation-harness")
            for task, entry in report["tasks"].items() for metric, value in entry["metrics"].items()]


def _training_text(summary: dict) -> str:
    lines = []
    if summary.get("data"):
        lines.append(f"- data: {summary['data']}")
    if summary.get("base_model"):
        lines.append(f"- initialised from: {summary['base_model']}")
    if summary.get("steps"):
        lines.append(f"- steps: {summary['steps']}")
    if speed := summary.get("throughput"):
        mfu = f", MFU {speed['mfu']:.1%}" if "mfu" in speed else ""
        lines.append(f"- throughput: {speed.get('tokens_per_second', 0):,.0f} tokens/s on {speed.get('device')}{mfu}")
    for key, value in (summary.get("metrics") or {}).items():
        if not isinstance(value, (list, dict)):
            lines.append(f"- {key}: {value:.4f}" if isinstance(value, float) else f"- {key}: {value}")
    return "\n".join(lines) or "See the repository files."


class _Namespace(dict):
    __getattr__ = dict.get


def _count_parameters(path: Path) -> int:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return sum(math.prod(f.get_slice(name).get_shape()) for name in f.keys())


def _is_hub_id(name: str) -> bool:
    return isinstance(name, str) and not Path(name).exists() and name.count("/") <= 1 and not name.startswith(".")


def files_to_upload(folder: Path) -> list[Path]:
    """The known files of a saved folder (and of its value_model/ or merged/ subfolder): regular files only, never a
    symbolic link (it could point anywhere), and every .safetensors file checked to be one."""
    files = []
    for sub in (folder, *(folder / name for name in SUBFOLDERS)):
        if sub.is_symlink() or not sub.is_dir():
            continue
        for path in sorted(sub.iterdir()):
            if path.is_symlink() or not path.is_file():
                continue
            if path.name in KNOWN_FILES or path.match(SHARDS):
                if path.suffix == ".safetensors":
                    check_safetensors(path)
                files.append(path)
    return files


HUB_TIMEOUT = 60.0  # seconds: a Hub that accepts a connection and never answers ends the push with one line


def use_timeouts(seconds: float = HUB_TIMEOUT) -> None:
    """Every huggingface_hub request of this process times out: connecting after min(10, seconds), waiting for an
    answer after `seconds` (huggingface_hub's own client waits forever)."""
    import httpx2
    from huggingface_hub import set_client_factory
    from huggingface_hub.utils._http import default_client_factory

    def client():
        session = default_client_factory()
        session.timeout = httpx2.Timeout(seconds, connect=min(10.0, seconds))
        return session

    set_client_factory(client)


def unreachable(err: BaseException, endpoint: str | None = None) -> str | None:
    """One line for a Hub that cannot be reached (refused, timed out, unknown host), or None for other errors."""
    import httpx2
    from huggingface_hub import constants

    where = endpoint or constants.ENDPOINT
    if isinstance(err, httpx2.TimeoutException):
        return f"The Hub at {where} did not answer in time ({type(err).__name__}): check the network or HF_ENDPOINT."
    if isinstance(err, (httpx2.TransportError, ConnectionError)):
        return f"Cannot reach the Hub at {where} ({' '.join(str(err).split()) or type(err).__name__}): check the " \
               "network or HF_ENDPOINT."
    return None


def check_token(token: str | None = None) -> str:
    """The user name behind the token, or a clear error before any work is done."""
    try:
        return HfApi(token=token).whoami()["name"]
    except Exception as err:
        if message := unreachable(err):
            raise ValueError(message) from None
        if not isinstance(err, (HfHubHTTPError, OSError, ValueError, KeyError)):
            raise
        status = getattr(getattr(err, "response", None), "status_code", None)
        reason = "it was refused (invalid or expired)" if status in (401, 403) else f"{type(err).__name__}"
        raise ValueError(f"No usable Hugging Face token: {reason}. Run `hf auth login` or set HF_TOKEN to a token "
                         "with write access.") from None


def push_folder(folder: str | Path, repo_id: str, private: bool = False, revision: str | None = None,
                token: str | None = None, commit_message: str | None = None, timeout: float = HUB_TIMEOUT) -> str:
    """Upload a saved hf_gpt folder as one commit; returns the commit URL."""
    folder = Path(folder)
    use_timeouts(timeout)
    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise ValueError(f"Invalid repo id {repo_id!r}: {err}. Use 'user/name'.") from None
    if not (folder / "config.json").exists():
        raise FileNotFoundError(f"{folder} is not a saved model folder (no config.json).")
    check_token(token)
    card = render_card(folder, repo_id)
    api = HfApi(token=token)
    try:
        ModelCard(card).validate()  # the Hub's own metadata check (/api/validate-yaml)
    except ValueError as err:
        raise ValueError(f"The model card's metadata was refused by the Hub: {err}") from None
    operations = [CommitOperationAdd(p.relative_to(folder).as_posix(), str(p)) for p in files_to_upload(folder)]
    operations.append(CommitOperationAdd("README.md", card.encode("utf-8")))
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        if revision:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        info = api.create_commit(repo_id, operations=operations, revision=revision,
                                 commit_message=commit_message or f"Upload hf-gpt {read_summary(folder)['stage']}")
    except HfHubHTTPError as err:
        status = getattr(err.response, "status_code", "?")
        raise ValueError(f"Upload of {folder} to {repo_id} failed (HTTP {status}); nothing local was changed. "
                         f"Retry `hf-gpt push {folder} {repo_id}`.") from None
    except Exception as err:
        if message := unreachable(err):
            raise ValueError(f"{message} Nothing local was changed; retry `hf-gpt push {folder} {repo_id}`.") from None
        raise
    return info.commit_url
