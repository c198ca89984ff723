"""What bench/gpu_check.sh runs on: device, versions, and every requirement of hf-gpt (transitively) that the Python
environment does not meet, so a lent GPU machine whose image lacks a package stops in seconds, not after minutes.

    python bench/gpu_env.py      # exit 1, with one line naming what is missing, where a requirement is unmet
"""

import sys
from importlib.metadata import PackageNotFoundError, distribution, version

import torch
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

SHOWN = ("torch", "transformers", "trl", "accelerate", "datasets", "tokenizers", "huggingface_hub", "peft")


# A CUDA build of torch pins its nvidia-* libraries; they come with the GPU image as one piece, which is never replaced.
NOT_WALKED = {"torch"}


def unmet_requirements(root: str = "hf-gpt") -> list[str]:
    """Requirements (no extras) of `root` and of everything it needs that the installed versions do not satisfy."""
    todo, seen, unmet = [root], set(), []
    while todo:
        name = canonicalize_name(todo.pop())
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = distribution(name).requires or []
        except PackageNotFoundError:
            return [f"{name} (missing)"]  # only the root can be missing here: the others were found below
        for line in requires:
            req = Requirement(line)
            if req.marker and not req.marker.evaluate({"extra": ""}):
                continue
            try:
                found = version(req.name)
            except PackageNotFoundError:
                unmet.append(f"{req} (missing)")
                continue
            if not req.specifier.contains(found, prereleases=True):
                unmet.append(f"{req} (found {found})")
            if canonicalize_name(req.name) not in NOT_WALKED:
                todo.append(req.name)
    return sorted(set(unmet))


def main() -> int:
    cuda = torch.cuda.is_available()
    print(f"python {sys.version.split()[0]}, device: {torch.cuda.get_device_name() if cuda else 'cpu (no CUDA)'}"
          + (f", CUDA {torch.version.cuda}" if cuda else ""))
    print(", ".join(f"{name} {version(name)}" for name in SHOWN))
    unmet = unmet_requirements()
    if unmet:
        print(f"error: unmet requirements: {'; '.join(unmet)}. Add their wheels to .gpu-carry/wheels (make gpu-carry).")
        return 1
    print("every requirement of hf-gpt is met")
    return 0


if __name__ == "__main__":
    sys.exit(main())
