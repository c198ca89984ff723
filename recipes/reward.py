"""Train a reward model (stage 3a) on {prompt, chosen, rejected} pairs with TRL's RewardTrainer:

python recipes/reward.py --config hh_rlhf --model_name_or_path runs/sft-self-instruct
"""

from hf_gpt.recipe_utils import run_recipe

if __name__ == "__main__":
    run_recipe("reward")
