"""Train a reward model (stage 3a) on {prompt, chosen, rejected} pairs with TRL's RewardTrainer:

    python recipes/reward.py --config hh_rlhf --model_name_or_path runs/sft-self-instruct
"""

from hf_gpt.recipe_utils import parse_recipe_args, push_if_requested, run_cli, take_push_request
from hf_gpt.reward import RewardRecipeConfig, train_reward_model


def main() -> None:
    (args,) = parse_recipe_args((RewardRecipeConfig,), stage="reward")
    push = take_push_request(args)
    train_reward_model(args, resume_from_checkpoint=args.resume_from_checkpoint or True)
    push_if_requested(push, args.output_dir)


if __name__ == "__main__":
    run_cli(main)
