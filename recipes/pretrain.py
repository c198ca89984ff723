"""Pretrain an hf_gpt model (stage 1). Same command under `python` and `accelerate launch`:

    python recipes/pretrain.py --config shakespeare
    accelerate launch --config_file recipes/accelerate/multi_gpu.yaml recipes/pretrain.py --config gpt2-small

Any field of `hf_gpt.pretrain.PretrainConfig` (TrainingArguments included) can be set in the YAML or as a flag.
A run restarted with the same output_dir resumes from its last checkpoint.
"""

from hf_gpt.recipe_utils import run_recipe

if __name__ == "__main__":
    run_recipe("pretrain")
