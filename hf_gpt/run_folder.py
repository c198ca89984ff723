"""The one owner of a run's output folder: every stage, recipe, launcher and the demo go through `RunFolder`.

The contract (README, "Reliability"):
- Nothing is deleted or written before every input is checked. Entering a `RunFolder` takes the folder's lock and
  decides, reading only, where the run starts; the stage then loads and checks its models and data; `begin()` alone
  removes old checkpoints (`--overwrite_output_dir`) and records the run in `run.json`.
- One run at a time: a lock held for the run's lifetime (`flock`, so a killed run's lock is free again at once); a
  second run into the folder gets one line naming the PID that holds it.
- A folder holding a model that no run of ours is training (weights or config.json, no `run.json`), or a finished
  run (its summary), is refused unless `--overwrite_output_dir`.
- A run resumes only itself: `run.json` records the data (size + SHA-256 of every file), the starting models and
  tokenizer (SHA-256 of their files), the number of processes, and every setting that changes the result; a resume
  that differs is refused with one line naming the field.
- Several processes: rank 0 decides and writes; the others wait at a barrier and receive its decision.
- State files are written atomically (a temporary file, then a rename).
- Ctrl-C and a full disk end the run with one line saying where it stopped and how to go on.
"""

import dataclasses
import errno
import fcntl
import hashlib
import json
import logging
import os
import shutil
import socket
import tempfile
from pathlib import Path

logger = logging.getLogger(__name__)

RUN_RECORD = "run.json"
SUMMARY = "training_summary.json"  # written last by every stage: the folder holds a finished model
LOCK = ".hf-gpt.lock"
RECORD_VERSION = 3
# Files that make a folder a model: a run refuses to train over them unless the folder is its own unfinished run.
MODEL_FILES = ("config.json", "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
               "adapter_config.json", "adapter_model.safetensors")
# Fields whose content is recorded (a fingerprint), not their spelling: the same file from another path is the same.
# Besides these, every field named `*_path` (a model, tokenizer, reward model, chat template, a new stage's teacher).
DATA_FIELDS = ("data_files", "eval_data_files", "dataset_name")
# Settings a resumed run may change: where, how often and how much it logs, evaluates, saves and reports, and how
# its work is scheduled on the machine. Nothing here changes the trained weights.
MAY_CHANGE = frozenset({
    "output_dir", "overwrite_output_dir", "resume_from_checkpoint", "logging_dir", "logging_steps",
    "logging_strategy", "logging_first_step", "logging_nan_inf_filter", "log_level", "log_level_replica",
    "log_on_each_node", "report_to", "run_name", "project", "trackio_space_id", "disable_tqdm", "save_steps",
    "save_strategy", "save_total_limit", "save_only_model", "save_on_each_node", "eval_steps", "eval_strategy",
    "eval_on_start", "eval_delay", "per_device_eval_batch_size", "eval_accumulation_steps", "push_to_hub",
    "hub_model_id", "hub_strategy", "hub_token", "hub_private_repo", "hub_always_push", "hub_revision",
    "dataloader_num_workers", "dataloader_pin_memory", "dataloader_prefetch_factor", "dataloader_persistent_workers",
    "local_rank", "use_cpu", "ddp_timeout", "ddp_backend", "torch_compile", "torch_compile_backend",
    "torch_compile_mode", "activation_checkpointing", "activation_checkpointing_kwargs", "gradient_checkpointing",
    "gradient_checkpointing_kwargs", "peak_tflops", "sample_prompts", "sample_max_new_tokens", "sample_every",
    "num_sample_answers", "skip_memory_metrics", "include_num_input_tokens_seen", "trust_remote_code",
})


class StopRun(Exception):
    """A run ended by the user or the machine (Ctrl-C, a full disk): one line, and the exit code to end with."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


def write_json(path: str | Path, value) -> None:
    """Write JSON atomically: readers see the old file or the new one, never half of one."""
    path = Path(path)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as f:
            json.dump(value, f, indent=1, ensure_ascii=False, default=str)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


# ---------------------------------------------------------------- what a run is: its record


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def folder_digest(folder: Path) -> str:
    """SHA-256 over the model files of a folder (config, weights, tokenizer), not its logs or checkpoints."""
    digest = hashlib.sha256()
    for path in sorted(folder.iterdir()):
        if path.is_file() and (path.suffix in (".json", ".safetensors", ".jinja", ".model", ".txt", ".bin")
                               and path.name not in (RUN_RECORD, SUMMARY, "reward_metrics.json")):
            digest.update(path.name.encode() + b"\0" + file_digest(path).encode())
    return digest.hexdigest()


def fingerprint(value) -> object:
    """What a data or model field refers to, by content where it is local: files → size and SHA-256 each; a folder →
    the digest of its model files; anything else (a Hub id) → itself."""
    if isinstance(value, (list, tuple)):
        return [fingerprint(v) for v in value]
    if not isinstance(value, str) or not value:
        return value
    path = Path(value)
    if path.is_file():
        return {"bytes": path.stat().st_size, "sha256": file_digest(path)}
    if path.is_dir():
        return {"folder_sha256": folder_digest(path)}
    return value


def run_record(args, stage: str, processes: int) -> dict:
    """What a resumed run must share with the run that wrote the checkpoints."""
    values = args.to_dict() if hasattr(args, "to_dict") else dataclasses.asdict(args)
    is_input = lambda k: k in DATA_FIELDS or k.endswith("_path")
    settings = {k: v for k, v in sorted(values.items()) if k not in MAY_CHANGE and not is_input(k)
                and not k.startswith("_")}
    inputs = {k: fingerprint(getattr(args, k)) for k in sorted(values) if is_input(k) and getattr(args, k, None)}
    return {"version": RECORD_VERSION, "stage": stage, "processes": processes, "inputs": inputs,
            "settings": json.loads(json.dumps(settings, default=str))}


def first_difference(recorded: dict, record: dict) -> tuple[str, object, object] | None:
    """(field, recorded value, current value) of the first field where two run records differ, else None."""
    if recorded.get("version") != RECORD_VERSION:
        return "run.json", "written by another hf-gpt version", f"version {RECORD_VERSION}"
    for section in ("stage", "processes", "inputs", "settings"):
        old, new = recorded.get(section), record.get(section)
        if isinstance(old, dict) and isinstance(new, dict):
            for key in sorted(set(old) | set(new)):
                if old.get(key) != new.get(key):
                    return key, _short(old.get(key)), _short(new.get(key))
        elif old != new:
            return section, old, new
    return None


def _short(value):
    """A fingerprint as a reader wants it: the file's size and the start of its hash."""
    if isinstance(value, dict) and "sha256" in value:
        return f"{value['bytes']} bytes, sha256 {value['sha256'][:12]}…"
    if isinstance(value, dict) and "folder_sha256" in value:
        return f"a folder with sha256 {value['folder_sha256'][:12]}…"
    if isinstance(value, list):
        return [_short(v) for v in value]
    return value


# ---------------------------------------------------------------- checkpoints


def checkpoints(output_dir: str | Path) -> list[Path]:
    found = [p for p in Path(output_dir).glob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit()]
    return sorted(found, key=lambda p: int(p.name.split("-")[-1]))


def last_complete_checkpoint(output_dir: str | Path, state_file: str = "trainer_state.json") -> str | None:
    """The newest checkpoint that was saved completely (its state file written last); a partial one, left by a kill
    during the save, is skipped with a warning."""
    for checkpoint in reversed(checkpoints(output_dir)):
        if (checkpoint / state_file).is_file():
            return str(checkpoint)
        logger.warning("Skipping %s: it has no %s (the run was stopped while saving it).", checkpoint, state_file)
    return None


def holds_model(folder: Path) -> bool:
    return any((folder / name).is_file() for name in MODEL_FILES)


# ---------------------------------------------------------------- the owner


class RunFolder:
    """`with RunFolder(args, "SFT") as run:` load and check everything, then `run.begin()`, then train from
    `run.checkpoint` (`run.train(trainer)` for a transformers Trainer). See the module's docstring for the contract."""

    def __init__(self, args, stage: str, resume_from_checkpoint: str | bool | None = True,
                 state_file: str = "trainer_state.json"):
        from accelerate import PartialState

        self.args, self.stage, self.state_file = args, stage, state_file
        self.out = Path(args.output_dir)
        self.resume = resume_from_checkpoint
        self.state = PartialState()  # set up by the parsed TrainingArguments: rank 0 decides, the others wait
        self.record = run_record(args, stage, self.state.num_processes)
        self.checkpoint: str | None = None
        self.begun = False
        self._lock = None
        self._created = self._lock_existed = False
        self._new_parents: list[Path] = []

    # -- entering: lock and decide, nothing written but the lock

    def __enter__(self) -> "RunFolder":
        decision: dict = {}
        if self.state.is_main_process:
            try:
                self._take_lock()
                decision = {"checkpoint": self._decide()}
            except (ValueError, FileNotFoundError) as err:
                decision = {"error": str(err)}
        decision = self._share(decision)
        if "error" in decision:
            self._leave(failed=True)
            raise ValueError(decision["error"])
        self.checkpoint = decision["checkpoint"]
        if self.checkpoint:
            logger.warning("Resuming %s from %s", self.stage, self.checkpoint)
        return self

    def _share(self, decision: dict) -> dict:
        if self.state.num_processes == 1:
            return decision
        from accelerate.utils import broadcast_object_list

        return broadcast_object_list([decision], from_process=0)[0]

    def _take_lock(self) -> None:
        self._created = not self.out.exists()
        self._new_parents = [parent for parent in self.out.parents if not parent.exists()]  # nearest first
        if self.out.exists() and not self.out.is_dir():
            raise ValueError(f"output_dir {self.out} is a file, not a folder: give a folder path.")
        self.out.mkdir(parents=True, exist_ok=True)
        self._lock_existed = (self.out / LOCK).exists()
        handle = open(self.out / LOCK, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise ValueError(f"{self.out} is in use by another run (PID {holder}): wait for it to finish, or give "
                             "another --output_dir.") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()} on {socket.gethostname()}\n")
        handle.flush()
        self._lock = handle

    def _decide(self) -> str | None:
        """The checkpoint to resume from, or None; refuses (ValueError) what would lose or mix work."""
        overwrite = bool(getattr(self.args, "overwrite_output_dir", False))
        explicit = self.resume if isinstance(self.resume, str) and self.resume else None
        if explicit:
            if not Path(explicit, self.state_file).is_file():
                raise FileNotFoundError(f"--resume_from_checkpoint {explicit} is not a complete checkpoint (no "
                                        f"{self.state_file}).")
            self._check_same_run(Path(explicit).parent / RUN_RECORD, explicit)
            return explicit
        if overwrite:
            return None
        recorded = self.out / RUN_RECORD
        if (self.out / SUMMARY).is_file():
            raise ValueError(f"{self.out} holds a finished {self.stage} model: pass --overwrite_output_dir true to "
                             "train again into it, --resume_from_checkpoint <checkpoint> to continue from one, or "
                             "another --output_dir.")
        if not recorded.is_file() and holds_model(self.out):
            raise ValueError(f"{self.out} holds a model that this run did not start (it has "
                             f"{next(n for n in MODEL_FILES if (self.out / n).is_file())}): pass "
                             "--overwrite_output_dir true to train over it, or give another --output_dir.")
        checkpoint = last_complete_checkpoint(self.out, self.state_file)
        if checkpoint and not self.resume:
            raise ValueError(f"{self.out} holds checkpoints of an unfinished run (the last: {Path(checkpoint).name}): "
                             "resume it (the default), pass --overwrite_output_dir true to start again, or give "
                             "another --output_dir.")
        if checkpoint:
            self._check_same_run(recorded, checkpoint)
        return checkpoint

    def _check_same_run(self, recorded_path: Path, checkpoint: str) -> None:
        if not recorded_path.is_file():
            return  # checkpoints of a run that recorded nothing: nothing to compare
        try:
            recorded = json.loads(recorded_path.read_text())
        except json.JSONDecodeError:
            recorded = {}
        difference = first_difference(recorded, self.record)
        if difference:
            field, old, new = difference
            raise ValueError(f"{Path(checkpoint).parent} holds checkpoints of another run ({field}: {old!r} there, "
                             f"{new!r} now); a resumed run keeps its checkpoint's data, model and settings. Rerun with "
                             "the recorded value, pass --overwrite_output_dir true to start afresh, or give another "
                             "--output_dir.")

    # -- beginning: the first write

    def begin(self) -> None:
        """Every input has been checked: clear what --overwrite_output_dir replaces, and record the run."""
        if self.state.is_main_process:
            if getattr(self.args, "overwrite_output_dir", False) and not self.checkpoint:
                for old in checkpoints(self.out):
                    shutil.rmtree(old)
                for name in (SUMMARY, RUN_RECORD):
                    (self.out / name).unlink(missing_ok=True)
            write_json(self.out / RUN_RECORD, self.record)
        self.begun = True
        self.state.wait_for_everyone()

    def finished_checkpoint(self) -> bool:
        """Whether the checkpoint to resume from is the run's last step: only the final save is left to do."""
        if not self.checkpoint or self.state_file != "trainer_state.json":
            return False
        state = json.loads(Path(self.checkpoint, self.state_file).read_text())
        return state.get("max_steps", 0) > 0 and state.get("global_step", 0) >= state["max_steps"]

    def train(self, trainer) -> None:
        """`trainer.train()` from the decided checkpoint; a run killed during its final save only reloads the last
        checkpoint, so a rerun finishes the save with the same steps and no extra checkpoint."""
        if self.finished_checkpoint():
            from transformers.trainer_callback import TrainerState

            trainer._load_from_checkpoint(self.checkpoint)
            trainer.state = TrainerState.load_from_json(str(Path(self.checkpoint, self.state_file)))
            logger.warning("%s finished training at step %d; writing its final model.", self.checkpoint,
                           trainer.state.global_step)
            return
        self.trainer = trainer
        trainer.train(resume_from_checkpoint=self.checkpoint)

    # -- leaving

    def __exit__(self, kind, error, traceback) -> None:
        self._leave(failed=error is not None)
        if isinstance(error, KeyboardInterrupt):
            raise StopRun(f"interrupted {self._where()}; rerun the same command to resume"
                          f"{self._from_checkpoint()}.", exit_code=130) from None
        if error is not None and disk_full(error, self.out):
            raise StopRun(f"no space left on device writing {_filename(error) or newest_file(self.out)}: free ~"
                          f"{free_megabytes(self.out)} MB there. Make room (fewer checkpoints: --save_total_limit) and "
                          f"rerun the same command to resume{self._from_checkpoint()}.") from None

    def _leave(self, failed: bool) -> None:
        if self.state.is_main_process and failed and not self.begun and self._created:
            shutil.rmtree(self.out, ignore_errors=True)  # a run that failed before training leaves nothing behind
            for parent in self._new_parents:  # nor the folders made for it, unless another run has used them since
                try:
                    parent.rmdir()
                except OSError:
                    break
        if self._lock is not None:
            if not self.begun and not self._lock_existed:  # a refused run leaves the folder as it found it
                (self.out / LOCK).unlink(missing_ok=True)
            self._lock.close()  # releases the flock
            self._lock = None

    def _where(self) -> str:
        trainer = getattr(self, "trainer", None)
        step = getattr(getattr(trainer, "state", None), "global_step", getattr(trainer, "step", None))
        return f"at step {step}" if step is not None else "before training"

    def _from_checkpoint(self) -> str:
        checkpoint = last_complete_checkpoint(self.out, self.state_file) if self.out.is_dir() else None
        return f" from {Path(checkpoint).name}" if checkpoint else ""


def disk_full(error: BaseException, folder: Path | None = None) -> bool:
    """ENOSPC anywhere in the exception chain, or the text libraries wrap it in (safetensors); or a failed write
    (torch.save says only "iostream error") on a disk with under 1 MB left."""
    if folder is not None and isinstance(error, (OSError, RuntimeError)) and free_megabytes(folder) < 1:
        return True
    while error is not None:
        if isinstance(error, OSError) and error.errno == errno.ENOSPC:
            return True
        if any(text in str(error) for text in ("No space left on device", "StorageFull")):
            return True
        error = error.__cause__ or error.__context__
    return False


def _filename(error: BaseException) -> str | None:
    while error is not None:
        if isinstance(error, OSError) and error.filename:
            return str(error.filename)
        error = error.__cause__ or error.__context__
    return None


def newest_file(folder: Path) -> Path:
    """The file written last under a folder: the one a failed write was writing."""
    found = [p for p in Path(folder).rglob("*") if p.is_file()]
    return max(found, key=lambda p: p.stat().st_mtime_ns) if found else Path(folder)


def free_megabytes(path: Path) -> int:
    path = Path(path)
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free // 2**20
