"""Supervised fine-tuning (stage 2), loss on response tokens only. Same command under `python` and `accelerate launch`:

    python recipes/sft.py --config self_instruct --model_name_or_path runs/pretrain-shakespeare
    python recipes/sft.py --config ko_chatbot --model_name_or_path runs/pretrain-korean --use_peft true

Any field of `hf_gpt.sft.SFTRecipeConfig` (TRL's SFTConfig included) can be set in the YAML or as a flag.
"""

from hf_gpt.recipe_utils import parse_recipe_args, push_if_requested, run_cli, take_push_request
from hf_gpt.sft import SFTRecipeConfig, sft


def main() -> None:
    (args,) = parse_recipe_args((SFTRecipeConfig,), stage="sft")
    push = take_push_request(args)
    sft(args, resume_from_checkpoint=args.resume_from_checkpoint or True)
    push_if_requested(push, args.output_dir)


if __name__ == "__main__":
    run_cli(main)
