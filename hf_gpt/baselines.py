"""The bar each stage has to clear, so that a number means something on any data.

- Pretraining: bits per byte of a unigram and a bigram model counted on the same training tokens and scored on the
  same validation targets as the GPT (a GPT that does not beat a bigram table has learnt nothing a table could not).
- SFT: held-out response loss of the same fine-tuning from random weights (does pretraining help?).
- Reward model: pairwise accuracy against chance, 0.5, with its standard error; beside it, a length rule (always
  prefer the shorter, or the longer, reply), the cue a weak reward model learns first.
- PPO: the change of the reward-model score against its own noise (the spread of per-step batch means).

A stage "beats" its baseline only when the difference is larger than about two standard errors.
"""

import math

import numpy as np

Z95 = 1.96  # two-sided 95 % normal quantile


def ngram_bits_per_byte(train_blocks: np.ndarray, val_blocks: np.ndarray, byte_lengths: np.ndarray) -> dict:
    """Unigram (add-one) and bigram (Witten-Bell back-off to the unigram) bits per byte of `val_blocks`, both
    (N, T) token ids; targets are positions 1..T-1 of each block, as for the GPT, and only tokens that stand for
    text (byte length > 0) count, as in `pretrain.bits_per_byte`."""
    vocab = len(byte_lengths)
    unigram = np.bincount(train_blocks.ravel(), minlength=vocab) + 1.0
    unigram /= unigram.sum()
    prev, nxt = train_blocks[:, :-1].ravel().astype(np.int64), train_blocks[:, 1:].ravel().astype(np.int64)
    pairs, pair_counts = np.unique(prev * vocab + nxt, return_counts=True)
    seen = np.bincount(prev, minlength=vocab)  # c(a): how often a has a successor
    kinds = np.bincount(pairs // vocab, minlength=vocab)  # T(a): distinct successors of a
    v_prev, v_next = val_blocks[:, :-1].ravel().astype(np.int64), val_blocks[:, 1:].ravel().astype(np.int64)
    where = np.clip(np.searchsorted(pairs, v_prev * vocab + v_next), 0, len(pairs) - 1)
    count = np.where(pairs[where] == v_prev * vocab + v_next, pair_counts[where], 0)
    denominator = seen[v_prev] + kinds[v_prev]
    # Witten-Bell: p(b | a) = (c(a, b) + T(a) p(b)) / (c(a) + T(a)); an unseen a falls back to p(b).
    bigram = np.where(denominator > 0, (count + kinds[v_prev] * unigram[v_next]) / np.maximum(denominator, 1),
                      unigram[v_next])
    nbytes = byte_lengths[v_next]
    counted, total_bits = nbytes > 0, math.log(2) * nbytes.sum()
    return {"unigram": float(-np.log(unigram[v_next])[counted].sum() / total_bits),
            "bigram": float(-np.log(bigram)[counted].sum() / total_bits)}


def against_chance(accuracy: float, n: int) -> dict:
    """Pairwise accuracy on n held-out pairs vs chance: its standard error sqrt(p(1-p)/n), and beaten when p is above
    0.5 + 1.96 sqrt(0.25/n), the 95 % bound of a coin's accuracy on n pairs."""
    chance_bound = 0.5 + Z95 * math.sqrt(0.25 / n)
    return {"accuracy": accuracy, "n": n, "standard_error": math.sqrt(accuracy * (1 - accuracy) / n),
            "chance_bound": chance_bound, "beats_baseline": accuracy > chance_bound}


def length_rule(train: list[tuple[str, str]], held_out: list[tuple[str, str]]) -> dict:
    """The shallowest ranker: always prefer the shorter (or the longer) of two replies, whichever picks the chosen
    one more often in the training (chosen, rejected) pairs; its accuracy on the held-out pairs (a tie counts ½)."""
    shorter_wins = sum(len(c) < len(r) for c, r in train) >= sum(len(c) > len(r) for c, r in train)
    right = sum(0.5 if len(c) == len(r) else float((len(c) < len(r)) == shorter_wins) for c, r in held_out)
    return {"length_rule_prefers": "shorter" if shorter_wins else "longer",
            "length_rule_accuracy": right / max(len(held_out), 1)}


def change_against_noise(first: list[float], last: list[float]) -> dict:
    """Mean of `last` minus mean of `first` (per-step batch means) with a 95 % interval from their spread."""
    variance = lambda xs: float(np.var(xs, ddof=1)) if len(xs) > 1 else 0.0
    change = float(np.mean(last) - np.mean(first))
    half_width = Z95 * math.sqrt(variance(first) / len(first) + variance(last) / len(last))
    return {"change": change, "interval": [change - half_width, change + half_width],
            "beats_baseline": change - half_width > 0}
