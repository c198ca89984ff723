"""Byte-level BPE: the tokenizer our GPT reads with, trained by the `tokenizers` library.

BPE starts from the 256 byte values (so any UTF-8 text, Korean and emoji included, round-trips exactly) and
repeatedly merges the most frequent adjacent pair into a new token until the vocabulary is full.

Design choices:
- pad != eos, so a reward model can pool on the eos that ends a reply and padding never looks like an ending.
- Plain `tokenizer(text)` adds no special tokens (as GPT-2); pretraining joins documents with eos itself, and the
  chat template emits bos itself.
- The chat template wraps each assistant reply *and its eos* in {% generation %} so TRL can train on replies only,
  and puts nothing after the final eos.
"""

from collections.abc import Iterable, Iterator
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

BOS, EOS, PAD = "<|bos|>", "<|eos|>", "<|pad|>"
MASK = "<|mask|>"  # BERT's [MASK]: the blank a masked language model fills in
ROLES = ("system", "user", "assistant")
ROLE_TOKENS = tuple(f"<|{role}|>" for role in ROLES)
SPECIAL_TOKENS = (BOS, EOS, PAD, *ROLE_TOKENS, MASK)  # MASK last: older vocabularies keep their ids

# transformers renders templates with trim_blocks, so newlines are written as '\n' inside expressions.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('Unknown role ' + message['role'] + ': use system, user or assistant.') }}"
    "{% endif %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|assistant|>\\n' }}{% generation %}{{ message['content'] }}{{ eos_token }}{% endgeneration %}"
    "{% else %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + '\\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)


def _check_files(files: list[Path]) -> None:
    for path in files:
        if not path.is_file():
            raise FileNotFoundError(
                f"Tokenizer training file not found: {str(path)[:200]}. Pass existing text files, or an iterator of "
                "strings (iter(texts)) to train on texts in memory."
            )
        if path.stat().st_size == 0:
            raise ValueError(f"Tokenizer training file is empty: {path}. Give it some text.")


def _lines(files: list[Path]) -> Iterator[str]:
    for path in files:
        try:
            with path.open(encoding="utf-8") as f:
                yield from f
        except UnicodeDecodeError as err:
            raise ValueError(
                f"{path} is not valid UTF-8 (byte {err.start}): convert it, e.g. `iconv -f cp949 -t utf-8`."
            ) from None


def train_tokenizer(
    files_or_iterator: str | Path | Iterable[str | Path] | Iterable[str],
    vocab_size: int = 8192,
    min_frequency: int = 2,
    model_max_length: int = 1024,
    show_progress: bool = False,
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE; return a transformers tokenizer with our special tokens and chat template.

    `files_or_iterator`: a path or a list of paths of UTF-8 text files, or an iterator of strings (e.g. `iter(texts)`).
    """
    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise ValueError(
            f"vocab_size={vocab_size} is too small: byte-level BPE needs the 256 bytes plus "
            f"{len(SPECIAL_TOKENS)} special tokens, so at least {256 + len(SPECIAL_TOKENS)}."
        )
    if isinstance(files_or_iterator, (str, Path)):
        files_or_iterator = [files_or_iterator]
    if isinstance(files_or_iterator, (list, tuple)):  # paths
        files = [Path(p) for p in files_or_iterator]
        _check_files(files)
        texts: Iterable[str] = _lines(files)
    else:  # an iterator of strings (a generator, a datasets column...)
        texts = files_or_iterator
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)  # exact char offsets (assistant masks)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=show_progress,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return wrap_tokenizer(tokenizer, model_max_length)


def wrap_tokenizer(tokenizer: Tokenizer, model_max_length: int = 1024) -> PreTrainedTokenizerFast:
    """Give a raw `tokenizers.Tokenizer` our special tokens and chat template, as a transformers tokenizer."""
    # A vocabulary trained before the mask token existed gets none, rather than an id past the model's embeddings.
    mask = {"mask_token": MASK} if tokenizer.token_to_id(MASK) is not None else {}
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        **mask,
        extra_special_tokens=list(ROLE_TOKENS),
        model_max_length=model_max_length,
        chat_template=CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,
    )


def special_token_ids(tokenizer: PreTrainedTokenizerFast) -> dict[str, int]:
    """The ids a model config needs: bos_token_id, eos_token_id, pad_token_id."""
    return {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
