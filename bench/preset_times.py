"""How long each recipe preset takes on this machine, for README's table (a benchmark, not a test).

    python bench/preset_times.py [--seconds 60] [--only pretrain:tiny sft:dolly ...]

Each preset runs as README says (`python recipes/<stage>.py --config <preset>`), its starting model made first by
the preset before it in the chain, cut to two steps (untimed). A run that has not finished after `--seconds` of
training is stopped; its time is then the setup (data, tokenizer, models: until the first step) plus the time the
stage's own progress line projects from the steps it took (`spent + left`). Prints a markdown table.
"""

import argparse
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# stage:preset → the presets whose output it starts from (model, then reward model), as in README's chain.
CHAIN = {
    "pretrain:tiny": [], "pretrain:shakespeare": [], "pretrain:tinystories": [], "pretrain:korean": [],
    "pretrain:nsmc": [], "mlm:nsmc": [],
    "sft:self_instruct": ["pretrain:tinystories"], "sft:dolly": ["pretrain:tinystories"],
    "sft:ko_chatbot": ["pretrain:korean"], "classify:nsmc": ["mlm:nsmc"],
    "reward:hh_rlhf": ["sft:self_instruct"], "dpo:hh_rlhf": ["sft:self_instruct"],
    "ppo:hh_rlhf": ["sft:self_instruct", "reward:hh_rlhf"], "grpo:hh_rlhf": ["sft:self_instruct", "reward:hh_rlhf"],
    "rloo:hh_rlhf": ["sft:self_instruct", "reward:hh_rlhf"],
}
LINE = re.compile(r"step (\d+)/(\d+) · (\S+) spent · ~(\S+) left")


def seconds(clock: str) -> float:
    """'42s', '3m05s', '1h12m' → seconds."""
    parts = dict((unit, int(value)) for value, unit in re.findall(r"(\d+)([hms])", clock))
    return parts.get("h", 0) * 3600 + parts.get("m", 0) * 60 + parts.get("s", 0)


def duration(value) -> str:
    if not isinstance(value, int):
        return str(value)
    return f"{value} s" if value < 90 else f"{value / 60:.0f} min" if value < 5400 else f"{value / 3600:.1f} h"


def command(name: str, out: Path, *extra: str) -> list[str]:
    stage, preset = name.split(":")
    starts = CHAIN[name]
    models = ["--model_name_or_path", str(out / starts[0].replace(":", "-"))] if starts else []
    if len(starts) > 1:
        models += ["--reward_model_path", str(out / starts[1].replace(":", "-"))]
    return [sys.executable, str(ROOT / "recipes" / f"{stage}.py"), "--config", preset, "--output_dir",
            str(out / name.replace(":", "-")), "--overwrite_output_dir", "true", "--report_to", "none", *models, *extra]


def prepare(name: str, out: Path, made: set[str]) -> None:
    """The models `name` starts from, each from its own preset cut to two steps."""
    for before in CHAIN[name]:
        if before not in made:
            prepare(before, out, made)
            subprocess.run(command(before, out, "--max_steps", "2", "--save_strategy", "no"), cwd=ROOT, check=True,
                           capture_output=True)
            made.add(before)


def timed(name: str, out: Path, limit: float) -> dict:
    started = time.perf_counter()
    process = subprocess.Popen(command(name, out, "--logging_steps", "1"), cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    first, last = None, None
    for line in process.stdout:
        found = LINE.search(line)
        if found:
            last = found
            if first is None:
                first = time.perf_counter() - started - seconds(found.group(3))
            if time.perf_counter() - started - first > limit:
                process.kill()
                break
    process.wait()
    total = time.perf_counter() - started
    if last is None:
        return {"preset": name, "time": f"failed ({process.returncode})"}
    step, steps = int(last.group(1)), int(last.group(2))
    if process.returncode == 0:
        return {"preset": name, "steps": steps, "time": round(total), "how": "ran to the end"}
    projected = first + seconds(last.group(3)) + seconds(last.group(4))
    return {"preset": name, "steps": steps, "time": round(projected), "how": f"setup + {step} steps' pace"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60, help="training seconds before a run is projected")
    parser.add_argument("--only", nargs="*", default=list(CHAIN), help="stage:preset names (default: all CPU ones)")
    parser.add_argument("--output-dir", type=Path, default=ROOT / "runs" / "preset-times")
    args = parser.parse_args()
    made: set[str] = set()
    print("| preset | steps | time on this machine | how |\n|---|---:|---:|---|")
    for name in args.only:
        prepare(name, args.output_dir, made)
        row = timed(name, args.output_dir, args.seconds)
        print(f"| `{name}` | {row.get('steps', '')} | {duration(row['time'])} | {row.get('how', '')} |", flush=True)


if __name__ == "__main__":
    main()
