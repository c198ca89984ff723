"""RLOO with TRL on the same SFT model and data as our PPO, for comparison:

python recipes/rloo.py --config hh_rlhf --model_name_or_path runs/sft --reward_model_path runs/reward
"""

from hf_gpt.recipe_utils import run_recipe

if __name__ == "__main__":
    run_recipe("rloo")
