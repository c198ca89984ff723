"""Data and scoring of hf-gpt's lm-evaluation-harness tasks (the YAML files beside this one name these functions).

The world's questions come from `hf_gpt.world`, the same rows `make demo`'s report asks; the Korean tasks read
../shared/data (or the folder HF_GPT_SHARED_DATA names).
"""

import json
import os
import random
from pathlib import Path

from datasets import Dataset, DatasetDict

from hf_gpt import world


def _test(rows: list[dict]) -> DatasetDict:
    return DatasetDict({"test": Dataset.from_list(rows)})


def _facts(split: str) -> DatasetDict:
    """Each question's answer as plain text to complete ("The capital of Norway is" → "Oslo."), with every ending of
    the same kind and language as the choices: the knowledge pretraining put in, without the chat format."""
    everything = world.questions("all")
    endings = {}
    for row in everything:
        endings.setdefault((row["kind"], row["language"]), set()).add(row["answer"].rsplit(" ", 1)[1])
    rows = []
    for row in world.questions(split):
        start, end = row["answer"].rsplit(" ", 1)
        choices = sorted(endings[row["kind"], row["language"]])
        rows.append({"context": start, "choices": choices, "label": choices.index(end), "language": row["language"]})
    return _test(rows)


def world_facts_held_out(**_) -> DatasetDict:
    return _facts("held_out")


def world_facts_seen(**_) -> DatasetDict:
    return _facts("seen")


def _chat(split: str) -> DatasetDict:
    """The report's chat questions: every held-out question and as many seen ones, each with its evaluation system
    prompt ("" for none), in the report's order."""
    held_out = world.eval_rows("held_out")
    rows = held_out if split == "held_out" else world.eval_rows("seen", len(held_out))
    return _test([{"question": r["prompt"], "answer": r["answer"], "system": r["system"] or "",
                   "language": r["language"]} for r in rows])


def world_chat_held_out(**_) -> DatasetDict:
    return _chat("held_out")


def world_chat_seen(**_) -> DatasetDict:
    return _chat("seen")


def score_chat(doc: dict, results: list[str]) -> dict[str, float]:
    """exact: the reply is the one right sentence; right_fact: it starts with it (whatever follows)."""
    reply = results[0].strip()
    return {"exact_match": float(reply == doc["answer"]), "right_fact": float(reply.startswith(doc["answer"]))}


def _shared(relative: str) -> Path:
    path = Path(os.environ.get("HF_GPT_SHARED_DATA", "../shared/data")) / relative
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: this task reads ../shared/data (run from the repo's root) or "
                                "the folder HF_GPT_SHARED_DATA names.")
    return path


KLUE_LABELS = ("entailment", "neutral", "contradiction")


def klue_nli(**_) -> DatasetDict:
    """KLUE-NLI dev (3,000 pairs): premise and hypothesis → 함의 / 중립 / 모순."""
    pairs = json.loads(_shared("ko_klue_sentences/klue-nli-v1.1_dev.json").read_text())
    return _test([{"premise": p["premise"], "hypothesis": p["hypothesis"], "label": KLUE_LABELS.index(p["gold_label"])}
                  for p in pairs])


def nsmc(n_per_label: int = 500, **_) -> DatasetDict:
    """NSMC reviews (raw crawl, 14,031 positive and 1,374 negative): `n_per_label` of each, in a fixed shuffle,
    so that always answering 긍정 scores 0.5."""
    rows = [json.loads(line) for line in _shared("ko_nsmc_reviews/nsmc_raw_reviews.jsonl").open(encoding="utf-8")]
    picked = []
    for label in (0, 1):
        same = [r for r in rows if r["label"] == label]
        random.Random(label).shuffle(same)
        picked += [{"text": r["text"], "label": label} for r in same[:n_per_label]]
    return _test(picked)
