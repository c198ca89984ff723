"""RLOO with TRL on the same SFT model and data as our PPO, for comparison:

    python recipes/rloo.py --config hh_rlhf --model_name_or_path runs/sft --reward_model_path runs/reward
"""

from hf_gpt.alternatives import RLOORecipeConfig, rloo
from hf_gpt.recipe_utils import parse_recipe_args, push_if_requested, run_cli, take_push_request


def main() -> None:
    (args,) = parse_recipe_args((RLOORecipeConfig,), stage="rloo")
    push = take_push_request(args)
    rloo(args)
    push_if_requested(push, args.output_dir)


if __name__ == "__main__":
    run_cli(main)
