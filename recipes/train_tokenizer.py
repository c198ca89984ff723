"""Train a byte-level BPE tokenizer on text files:

    python recipes/train_tokenizer.py --files ../shared/data/tinyshakespeare/input.txt --vocab-size 2048 --out tok/
"""

from hf_gpt.cli import main

if __name__ == "__main__":
    import sys

    main(["tokenizer", "train", *sys.argv[1:]])
