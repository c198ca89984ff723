"""Train an hf_gpt encoder-decoder (the original Transformer) to translate, with transformers' Seq2SeqTrainer:

    python recipes/translate.py                      # the demo world's English → Korean pairs
    python recipes/translate.py --data_files train.jsonl --eval_data_files test.jsonl   # rows {source, target}

Any field of `hf_gpt.seq2seq.TranslateConfig` (Seq2SeqTrainingArguments included) can be set in the YAML or as a flag.
"""

from hf_gpt.recipe_utils import run_recipe

if __name__ == "__main__":
    run_recipe("translate")
