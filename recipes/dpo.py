"""DPO with TRL on the same SFT model and data as our PPO, for comparison:

    python recipes/dpo.py --config hh_rlhf --model_name_or_path runs/sft
"""

from hf_gpt.alternatives import DPORecipeConfig, dpo
from hf_gpt.recipe_utils import parse_recipe_args, push_if_requested, run_cli, take_push_request


def main() -> None:
    (args,) = parse_recipe_args((DPORecipeConfig,), stage="dpo")
    push = take_push_request(args)
    dpo(args)
    push_if_requested(push, args.output_dir)


if __name__ == "__main__":
    run_cli(main)
