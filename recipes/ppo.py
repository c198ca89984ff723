"""PPO (stage 3b): policy from SFT, KL penalty to the frozen SFT model, reward from the RM and/or functions.

    python recipes/ppo.py --config hh_rlhf --model_name_or_path runs/sft --reward_model_path runs/reward
    accelerate launch --config_file recipes/accelerate/multi_cpu.yaml recipes/ppo.py --config hh_rlhf ...

Reward functions are given as dotted paths: --reward_functions my_pkg.rewards:exact_match
"""

from hf_gpt.alternatives import import_reward_function
from hf_gpt.ppo import PPOConfig, ppo
from hf_gpt.recipe_utils import parse_recipe_args, push_if_requested, run_cli, take_push_request


def main() -> None:
    (args,) = parse_recipe_args((PPOConfig,), stage="ppo")
    push = take_push_request(args)
    funcs = [import_reward_function(path) for path in args.reward_functions or []]
    ppo(args, reward_funcs=funcs, resume_from_checkpoint=args.resume_from_checkpoint or True)
    push_if_requested(push, args.output_dir)


if __name__ == "__main__":
    run_cli(main)
