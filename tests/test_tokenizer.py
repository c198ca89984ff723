import subprocess
import sys

import pytest
from transformers import AutoTokenizer
from trl.chat_template_utils import is_chat_template_stop_token_trained

from hf_gpt.tokenizer import BOS, EOS, PAD, ROLE_TOKENS, train_tokenizer

TEXTS = [
    "Hello, world! The quick brown fox.",
    "대한민국의 수도는 서울입니다",
    "emoji 😀🎉 and ünïcödé",
    "tabs\t\tand   runs of    spaces\n\n\n end  ",
]
CHAT = [
    {"role": "system", "content": "You are brief."},
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "4"},
    {"role": "user", "content": "And 3+3?"},
    {"role": "assistant", "content": "It is 6."},
]


@pytest.mark.parametrize("text", TEXTS)
def test_exact_round_trip(tokenizer, text):
    ids = tokenizer(text).input_ids
    assert tokenizer.decode(ids) == text


def test_bpe_learns_merges(tokenizer):
    # Frequent English words of the training text become single tokens; unseen Korean falls back to bytes.
    assert len(tokenizer("statement").input_ids) <= 2
    assert len(tokenizer("서울").input_ids) == len("서울".encode())


def test_special_tokens(tokenizer):
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) == (BOS, EOS, PAD)
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    for token in ROLE_TOKENS:
        assert len(tokenizer(token).input_ids) == 1  # never split
    assert tokenizer("hi").input_ids == tokenizer("hi", add_special_tokens=False).input_ids  # plain text: no bos


def test_chat_template_renders(tokenizer):
    text = tokenizer.apply_chat_template(CHAT, tokenize=False)
    assert text == (
        "<|bos|><|system|>\nYou are brief.\n<|user|>\nWhat is 2+2?\n<|assistant|>\n4<|eos|>"
        "<|user|>\nAnd 3+3?\n<|assistant|>\nIt is 6.<|eos|>"
    )
    prompt = tokenizer.apply_chat_template(CHAT[:2], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|user|>\nWhat is 2+2?\n<|assistant|>\n")
    with pytest.raises(Exception, match="Unknown role"):
        tokenizer.apply_chat_template([{"role": "robot", "content": "x"}], tokenize=False)


def test_assistant_mask_covers_replies_and_eos_only(tokenizer):
    out = tokenizer.apply_chat_template(CHAT, return_dict=True, return_assistant_tokens_mask=True)
    ids, mask = out["input_ids"], out["assistant_masks"]
    masked = [i for i, m in zip(ids, mask) if m]
    expected = tokenizer("4").input_ids + [tokenizer.eos_token_id] + tokenizer("It is 6.").input_ids + [
        tokenizer.eos_token_id]
    assert masked == expected
    assert ids[-1] == tokenizer.eos_token_id  # nothing after the final eos: reward models pool on it
    # TRL's own check that the end-of-turn token is trained.
    assert is_chat_template_stop_token_trained(tokenizer)


def test_save_and_reload(tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    for text in TEXTS:
        assert loaded(text).input_ids == tokenizer(text).input_ids
    assert loaded.apply_chat_template(CHAT, tokenize=False) == tokenizer.apply_chat_template(CHAT, tokenize=False)
    assert loaded.pad_token_id == tokenizer.pad_token_id


def test_train_from_files_and_errors(tmp_path):
    good = tmp_path / "a.txt"
    good.write_text("안녕하세요 세계\nhello world\n" * 50, encoding="utf-8")
    tok = train_tokenizer([good], vocab_size=300)
    assert tok.decode(tok("안녕하세요 hello").input_ids) == "안녕하세요 hello"
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        train_tokenizer([tmp_path / "missing.txt"])
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(ValueError, match="empty"):
        train_tokenizer([empty])
    bad = tmp_path / "cp949.txt"
    bad.write_bytes("한국어".encode("cp949"))
    with pytest.raises(ValueError, match="not valid UTF-8"):
        train_tokenizer([bad])
    with pytest.raises(ValueError, match="at least 263"):  # 256 bytes + 7 special tokens (mask included)
        train_tokenizer([good], vocab_size=100)


def test_cli_trains_a_tokenizer(tmp_path):
    corpus = tmp_path / "corpus.txt"
    from pydoc_data.topics import topics

    corpus.write_text("\n".join(topics.values()), encoding="utf-8")
    out = tmp_path / "tok"
    result = subprocess.run([sys.executable, "-m", "hf_gpt.cli", "tokenizer", "train", "--files", str(corpus),
                             "--vocab-size", "300", "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert len(AutoTokenizer.from_pretrained(out)) == 300
    from hf_gpt.cli import main

    with pytest.raises(SystemExit) as missing:  # in-process: the same entry point, one line instead of a traceback
        main(["tokenizer", "train", "--files", "nope.txt", "--out", str(out)])
    assert str(missing.value.code).startswith("hf-gpt: error: Tokenizer training file not found: nope.txt")
