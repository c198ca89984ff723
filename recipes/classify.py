"""Fine-tune an hf_gpt encoder (MLM) or decoder (GPT) folder for sequence classification; held-out accuracy next to
the majority-label baseline:

    python recipes/classify.py --config nsmc --model_name_or_path runs/mlm-nsmc --output_dir runs/classify-bert
    python recipes/classify.py --config nsmc --model_name_or_path runs/pretrain-nsmc --output_dir runs/classify-gpt

Any field of `hf_gpt.classify.ClassifyConfig` (TrainingArguments included) can be set in the YAML or as a flag.
"""

from hf_gpt.recipe_utils import run_recipe

if __name__ == "__main__":
    run_recipe("classify")
