"""Pretrain a BERT-style encoder (bidirectional hf_gpt blocks, masked language model). Same command under `python`
and `accelerate launch`:

    python recipes/mlm.py --config nsmc
    python recipes/mlm.py --data_files my.txt --output_dir runs/mlm-mine

Any field of `hf_gpt.mlm.MlmConfig` (PretrainConfig and TrainingArguments included) can be set in the YAML or as a
flag. A run restarted with the same output_dir resumes from its last checkpoint.
"""

from hf_gpt.recipe_utils import run_recipe

if __name__ == "__main__":
    run_recipe("mlm")
