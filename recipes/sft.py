"""Supervised fine-tuning (stage 2), loss on response tokens only. Same command under `python` and `accelerate launch`:

    python recipes/sft.py --config self_instruct --model_name_or_path runs/pretrain-shakespeare
    python recipes/sft.py --config ko_chatbot --model_name_or_path runs/pretrain-korean --use_peft true

Any field of `hf_gpt.sft.SFTRecipeConfig` (TRL's SFTConfig included) can be set in the YAML or as a flag.
"""

from hf_gpt.recipe_utils import run_recipe

if __name__ == "__main__":
    run_recipe("sft")
