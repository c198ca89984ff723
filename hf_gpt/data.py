"""Pretraining data: documents → token ids → one stream with eos between documents → blocks of the context length.

Design choices:
- Local .txt / .jsonl / .json / .parquet / .csv files, or a Hub dataset name, all through `datasets.load_dataset`
  (so tokenisation is cached by `datasets` and large corpora can stream).
- A .txt file is read as one stream with its line breaks kept, exactly as nanoGPT reads it.
- Packing carries the remainder of each document over to the next block, so no token is lost or duplicated except
  the final partial block; the validation split is the tail of the stream (like nanoGPT's 90/10 split) unless the
  dataset has its own.
"""

import codecs
import json
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from datasets import Dataset, DatasetDict, IterableDataset, concatenate_datasets, load_dataset
from transformers import PreTrainedTokenizerBase

logger = logging.getLogger(__name__)
BUILDERS = {".txt": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


def check_text_file(path: Path) -> None:
    """Fail early, in one line, on a missing, empty or non-UTF-8 file, or one that is no regular file (a folder, a
    FIFO, a device): instead of deep inside `datasets`, or hanging on a FIFO."""
    if not path.exists():
        raise FileNotFoundError(f"Data file not found: {path}. Check the path in dataset_name / data_files.")
    if not path.is_file():
        kind = "a folder" if path.is_dir() else "a FIFO" if path.is_fifo() else "a device or socket"
        raise ValueError(f"{path} is not a regular file ({kind}): give the data file itself.")
    if path.stat().st_size == 0:
        raise ValueError(f"Data file is empty: {path}. Give it some text.")
    if path.suffix in (".parquet",):
        return
    if path.suffix == ".jsonl":
        check_jsonl(path)
        return
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as err:
                raise ValueError(
                    f"{path} is not valid UTF-8 (byte {offset + err.start}): convert it first, "
                    f"e.g. `iconv -f cp949 -t utf-8 {path.name} > fixed{path.suffix}`."
                ) from None
            offset += len(chunk)


def check_jsonl(path: Path) -> None:
    """Every line one JSON object, UTF-8: else one line naming the file and the line (not a traceback from pyarrow)."""
    with path.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw.decode("utf-8-sig").strip())  # a byte-order mark is not text
            except UnicodeDecodeError:
                raise ValueError(f"{path} line {number} is not valid UTF-8: convert the file, e.g. `iconv -f cp949 "
                                 f"-t utf-8`.") from None
            except json.JSONDecodeError as err:
                raise ValueError(f"{path} line {number} is not valid JSON ({err.msg}, column {err.colno}): fix or "
                                 "remove that line.") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path} line {number} is a JSON {type(row).__name__}, not an object {{...}}: each "
                                 "line must be one row.")


def load_documents(
    data_files: list[str] | None = None,
    dataset_name: str | None = None,
    dataset_config: str | None = None,
    text_column: str = "text",
    streaming: bool = False,
) -> DatasetDict | dict[str, IterableDataset]:
    """Load raw documents with `datasets`: local files (checked first) or a Hub dataset name."""
    if bool(data_files) == bool(dataset_name):
        raise ValueError("Give exactly one of data_files (local .txt/.jsonl/.parquet files) or dataset_name (Hub).")
    if data_files:
        paths = [Path(p) for p in data_files]
        for path in paths:
            check_text_file(path)
        suffixes = {p.suffix for p in paths}
        if len(suffixes) != 1 or (suffix := suffixes.pop()) not in BUILDERS:
            raise ValueError(f"data_files must share one of the types {', '.join(BUILDERS)}; got {data_files}.")
        # utf-8-sig: a byte-order mark at the start of a text file is not text to train on
        extra = {"sample_by": "document", "keep_linebreaks": True, "encoding": "utf-8-sig"} if suffix == ".txt" else {}
        # One file at a time: files of one corpus often carry different extra columns, which `datasets` cannot
        # merge into one schema; only the text column is kept.
        parts = [load_dataset(BUILDERS[suffix], data_files=[str(p)], streaming=streaming, **extra)["train"]
                 for p in paths]
        for path, part in zip(paths, parts):
            _check_column(part, text_column, str(path))
        train = parts[0].select_columns([text_column]) if len(parts) == 1 else concatenate_datasets(
            [part.select_columns([text_column]) for part in parts])
        raw = {"train": train} if streaming else DatasetDict(train=train)
    else:
        raw = load_dataset(dataset_name, dataset_config, streaming=streaming)
        for split, ds in raw.items():
            _check_column(ds, text_column, f"the {split} split")
    return raw


def _check_column(ds: Dataset | IterableDataset, text_column: str, where: str) -> None:
    columns = ds.column_names if ds.column_names is not None else list(next(iter(ds)).keys())
    if text_column not in columns:
        raise ValueError(f"{where} has no column {text_column!r} (it has {columns}): set text_column to one of them.")


def pack_into_blocks(token_lists: Iterable[list[int]], block_size: int, eos_token_id: int) -> Iterator[list[int]]:
    """Concatenate documents, each followed by eos, and cut the stream into blocks of block_size tokens."""
    buffer: list[int] = []
    for ids in token_lists:
        buffer.extend(ids)
        buffer.append(eos_token_id)
        full = len(buffer) - len(buffer) % block_size
        for start in range(0, full, block_size):
            yield buffer[start:start + block_size]
        del buffer[:full]  # once per document: cutting block by block re-copies a long document's tail each time


def _blocks(dataset: Dataset | IterableDataset, block_size: int, eos_token_id: int) -> Iterator[dict]:
    documents = (ids for batch in dataset.iter(batch_size=1024) for ids in batch["input_ids"])  # not row by row
    for block in pack_into_blocks(documents, block_size, eos_token_id):
        yield {"input_ids": block}


def build_lm_datasets(
    raw: DatasetDict | dict[str, IterableDataset],
    tokenizer: PreTrainedTokenizerBase,
    block_size: int,
    text_column: str = "text",
    validation_fraction: float = 0.1,
    num_proc: int | None = None,
    stream_validation_documents: int = 0,
) -> tuple[Dataset | IterableDataset, Dataset | None]:
    """Tokenise (cached by `datasets`), pack into blocks, and hold out a validation split: the corpus's own, else
    the tail of a dataset (validation_fraction), or the head of a stream (its first stream_validation_documents:
    a stream's length is unknown, so it has no tail)."""
    if tokenizer.eos_token_id is None:
        raise ValueError("The tokenizer has no eos token: documents are joined with eos. Train it with hf_gpt.")

    def tokenize(batch: dict) -> dict:
        # split_special_tokens: "<|eos|>" typed in a document is text, never the eos that joins documents
        return {"input_ids": tokenizer(batch[text_column], add_special_tokens=False, split_special_tokens=True,
                                       verbose=False)["input_ids"]}

    streaming = isinstance(next(iter(raw.values())), IterableDataset)
    if streaming and stream_validation_documents > 0 and not {"validation", "test"} & raw.keys():
        stream = raw["train"]
        head = Dataset.from_list(list(stream.take(stream_validation_documents)))
        raw = {"train": stream.skip(stream_validation_documents), "validation": head}
    packed = {}
    for split, ds in raw.items():
        eager = isinstance(ds, Dataset)  # a stream's held-out head is a small eager Dataset
        extra = {"num_proc": num_proc, "desc": f"Tokenizing {split}"} if eager else {}
        tokens = ds.map(tokenize, batched=True, remove_columns=ds.column_names, **extra)
        gen_kwargs = {"dataset": tokens, "block_size": block_size, "eos_token_id": tokenizer.eos_token_id}
        builder = Dataset if eager else IterableDataset
        packed[split] = builder.from_generator(_blocks, gen_kwargs=gen_kwargs)
    train = packed["train"]
    validation = packed.get("validation", packed.get("test"))
    if validation is None and not streaming and validation_fraction > 0:
        n_val = max(1, round(len(train) * validation_fraction))
        if n_val >= len(train):
            raise ValueError(
                f"Only {len(train)} blocks of {block_size} tokens: too little text for a validation split. "
                "Add text or lower block_size."
            )
        train, validation = train.select(range(len(train) - n_val)), train.select(range(len(train) - n_val, len(train)))
    if not streaming and len(train) == 0:
        raise ValueError(f"The text gives no full block of {block_size} tokens: add text or lower block_size.")
    return train, validation


def load_rows(args) -> Dataset:
    """Rows for SFT, reward modelling or RL: `args.data_files` (local .jsonl/.json/.parquet/.csv, checked first) or
    `args.dataset_name` (Hub, `args.dataset_split`), cut to `args.max_rows`."""
    if bool(args.data_files) == bool(args.dataset_name):
        raise ValueError("Give exactly one of data_files (local .jsonl files) or dataset_name (Hub).")
    if args.data_files:
        dataset = read_rows(args.data_files)
    else:
        dataset = load_dataset(args.dataset_name, args.dataset_config, split=args.dataset_split)
    return dataset.select(range(min(args.max_rows, len(dataset)))) if args.max_rows else dataset


def read_rows(data_files: list[str]) -> Dataset:
    """Rows of local files of one type, each checked first (one line naming a missing file or bad JSON)."""
    for path in data_files:
        check_text_file(Path(path))
    suffixes = {Path(p).suffix for p in data_files}
    if len(suffixes) != 1:
        raise ValueError(f"data_files mixes file types ({', '.join(sorted(suffixes))}): convert them to one type.")
    suffix = suffixes.pop()
    return load_dataset(BUILDERS.get(suffix, suffix.lstrip(".")), data_files=list(data_files), split="train")


def convert_rows(dataset: Dataset, convert: Callable[[dict], dict],
                 check: Callable[[dict], tuple[str, str | None] | None], what: str) -> tuple[Dataset, Counter]:
    """Convert every row, counting what happens instead of failing deep inside a trainer.

    `convert` raises ValueError for a bad row (skipped). `check` returns None to keep the row, (key, None) to keep it
    and count it under key, or (key, problem) to drop it; skipped and dropped rows are logged with their number."""
    rows, report, problems = [], Counter(), []
    for i, row in enumerate(dataset):
        try:
            item = convert(row)
        except ValueError as err:
            report["skipped: bad row"] += 1
            problems.append(f"row {i}: {err}")
            continue
        if (note := check(item)) is not None:
            key, problem = note
            report[key] += 1
            if problem:
                problems.append(f"row {i}: {problem}")
                continue
        rows.append(item)
    report["kept"] = len(rows)
    for line in problems[:10]:
        logger.warning("%s data: %s", what, line)
    if not rows:
        raise ValueError(f"No usable {what} row ({dict(report)}); first problems: {problems[:3]}")
    return Dataset.from_list(rows), report


def write_jsonl(path: str | Path, rows: Iterable[dict]) -> str:
    """Rows as JSON lines (UTF-8, non-ASCII kept), parent folders created; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return str(path)
