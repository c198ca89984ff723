"""Train a reward model (stage 3a) on {prompt, chosen, rejected} pairs with TRL's RewardTrainer:

    python recipes/reward.py --config hh_rlhf --model_name_or_path runs/sft-self-instruct
"""

from hf_gpt.recipe_utils import parse_recipe_args, run_cli
from hf_gpt.reward import RewardRecipeConfig, train_reward_model


def main() -> None:
    (args,) = parse_recipe_args((RewardRecipeConfig,), stage="reward")
    train_reward_model(args, resume_from_checkpoint=args.resume_from_checkpoint or True)


if __name__ == "__main__":
    run_cli(main)
