"""`hf-gpt eval`: a saved model scored by lm-evaluation-harness, results beside the model and in its model card.

The model is loaded once by hf-gpt's loader and handed to the harness's `HFLM`; the harness builds the prompts, runs
the requests and computes the metrics. hf-gpt ships its own tasks (hf_gpt/lm_eval_tasks: the world's facts as
multiple choice for base models, its chat questions with exact match for chat models, KLUE-NLI and NSMC as Korean
multiple choice from ../shared/data); any task the harness knows (hellaswag, arc_easy, lambada_openai, kobest_*) is
named the same way and downloads its data from the Hub.
"""

import logging
from importlib import resources
from pathlib import Path

from .hub import LM_EVAL_RESULTS as RESULTS

TASKS_DIR = "lm_eval_tasks"
# hf-gpt's own tasks that are asked through the chat template; every other task by --apply-chat-template
CHAT_TASKS = ("world_chat", "world_chat_held_out", "world_chat_seen")


def _require_lm_eval():
    try:
        import lm_eval
    except ImportError:
        raise ValueError("hf-gpt eval needs lm-evaluation-harness: pip install 'hf-gpt[eval]' (it keeps your torch)."
                         ) from None
    return lm_eval


def tasks_path() -> str:
    return str(resources.files("hf_gpt") / TASKS_DIR)


def _flatten(results: dict, samples: dict) -> dict[str, dict]:
    """The harness's {task: {"acc,none": v, "acc_stderr,none": s, ...}} → {task: {metric: {value, stderr}, n}}."""
    flat = {}
    for task, values in results.items():
        metrics = {}
        for key, value in values.items():
            name, _, _filter = key.partition(",")
            bookkeeping = name in ("alias", "samples", "sample_len") or name.endswith("_stderr")
            if bookkeeping or not isinstance(value, (int, float)):
                continue
            stderr = values.get(f"{name}_stderr,{_filter}")
            metrics[name] = {"value": float(value),
                             "stderr": float(stderr) if isinstance(stderr, (int, float)) else None}
        if metrics:
            flat[task] = {"metrics": metrics, "n": samples.get(task, {}).get("effective")}
    return flat


def evaluate(model_path: str, tasks: list[str], limit: float | None = None, batch_size: int = 16,
             apply_chat_template: bool = False, num_fewshot: int | None = None, trust_remote_code: bool = False,
             output_dir: str | Path | None = None) -> dict:
    """Score `model_path` on `tasks`; write RESULTS (and, for a local folder, its README.md model card) into
    `output_dir` (default: the folder itself). Returns the results as written."""
    lm_eval = _require_lm_eval()
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager
    from transformers import AutoModelForCausalLM

    from .loading import load_model_and_tokenizer

    if not tasks:
        raise ValueError("Name at least one task: --tasks world_facts (base models), world_chat (chat models), or any "
                         "lm-evaluation-harness task such as hellaswag.")
    manager = TaskManager(include_path=tasks_path())
    unknown = [t for t in tasks if not manager.match_tasks([t])]
    if unknown:
        raise ValueError(f"Unknown task {', '.join(unknown)}: hf-gpt's are {', '.join(own_tasks())}; "
                         "`lm-eval ls tasks` lists the harness's.")
    tokenizer, model = load_model_and_tokenizer(AutoModelForCausalLM, model_path, "the model to evaluate",
                                                trust_remote_code)
    lm = HFLM(pretrained=model.eval(), tokenizer=tokenizer, batch_size=batch_size,
              max_length=model.config.max_position_embeddings)
    groups = {True: [t for t in tasks if t in CHAT_TASKS or apply_chat_template],
              False: [t for t in tasks if t not in CHAT_TASKS and not apply_chat_template]}
    results, samples, configs = {}, {}, {}
    for chat, names in groups.items():
        if not names:
            continue
        try:
            out = lm_eval.simple_evaluate(model=lm, tasks=names, task_manager=manager, limit=limit,
                                          num_fewshot=num_fewshot, apply_chat_template=chat, log_samples=False,
                                          bootstrap_iters=1000, verbosity="ERROR")
        except ConnectionError as err:  # a harness task's data set is on the Hub
            raise ValueError(f"{', '.join(names)}: the task's data could not be downloaded ({err}). Run once online "
                             "(the data are cached after), or use hf-gpt's own tasks: "
                             f"{', '.join(own_tasks())}.") from None
        results |= out["results"]
        samples |= out.get("n-samples", {})
        configs |= {task: {"chat_template": chat, "num_fewshot": out.get("n-shot", {}).get(task)}
                    for task in out["results"]}
    report = {"model": str(model_path), "lm_eval_version": lm_eval.__version__, "limit": limit,
              "tasks": {task: {**values, **configs.get(task, {})}
                        for task, values in _flatten(results, samples).items()}}
    _write(report, model_path, output_dir)
    return report


def own_tasks() -> list[str]:
    """hf-gpt's shipped task names (and the tags that run several)."""
    names = sorted(p.stem for p in (resources.files("hf_gpt") / TASKS_DIR).iterdir() if p.name.endswith(".yaml"))
    return ["world_facts", "world_chat", *names]


def _write(report: dict, model_path: str, output_dir: str | Path | None) -> Path:
    from .hub import render_card
    from .run_folder import write_json

    local = Path(str(model_path))
    out = Path(output_dir) if output_dir else local if local.is_dir() else Path("runs/eval") / local.name
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / RESULTS, report)
    if out == local and (local / "config.json").is_file():
        (local / "README.md").write_text(render_card(local, local.name), encoding="utf-8")
    return out


def quiet_harness() -> None:
    """The harness logs every task it builds, and warns that it was handed a loaded model (as hf-gpt does on
    purpose) and that custom data sets take metadata; a user wants the table, and its errors."""
    logging.getLogger("lm_eval").setLevel(logging.ERROR)
