"""RLOO with TRL on the same SFT model and data as our PPO, for comparison:

    python recipes/rloo.py --config hh_rlhf --model_name_or_path runs/sft --reward_model_path runs/reward
"""

from hf_gpt.alternatives import RLOORecipeConfig, rloo
from hf_gpt.recipe_utils import parse_recipe_args, run_cli


def main() -> None:
    (args,) = parse_recipe_args((RLOORecipeConfig,), stage="rloo")
    rloo(args)


if __name__ == "__main__":
    run_cli(main)
