"""PPO (stage 3b): policy from SFT, KL penalty to the frozen SFT model, reward from the RM and/or functions.

    python recipes/ppo.py --config hh_rlhf --model_name_or_path runs/sft --reward_model_path runs/reward
    accelerate launch --config_file recipes/accelerate/multi_cpu.yaml recipes/ppo.py --config hh_rlhf ...

Reward functions are given as dotted paths: --reward_functions my_pkg.rewards:exact_match
"""

from hf_gpt.recipe_utils import run_recipe

if __name__ == "__main__":
    run_recipe("ppo")
