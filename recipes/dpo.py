"""DPO with TRL on the same SFT model and data as our PPO, for comparison:

    python recipes/dpo.py --config hh_rlhf --model_name_or_path runs/sft
"""

from hf_gpt.alternatives import DPORecipeConfig, dpo
from hf_gpt.recipe_utils import parse_recipe_args, run_cli


def main() -> None:
    (args,) = parse_recipe_args((DPORecipeConfig,), stage="dpo")
    dpo(args)


if __name__ == "__main__":
    run_cli(main)
