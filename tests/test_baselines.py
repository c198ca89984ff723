"""Baselines against their formulas: n-gram bits per byte, accuracy against chance, a change against its noise."""

import math

import numpy as np
import pytest

from hf_gpt.baselines import against_chance, change_against_noise, length_rule, ngram_bits_per_byte


def test_ngram_bits_per_byte_by_hand():
    train = np.array([[0, 1, 0, 1]])
    val = np.array([[0, 1, 0, 2]])  # targets 1, 0, 2; token 2 (like eos) stands for no bytes: not counted
    byte_lengths = np.array([1, 2, 0])
    # Unigram, add-one: counts 0:2+1, 1:2+1, 2:0+1 → p = 3/7, 3/7, 1/7.
    p = np.array([3, 3, 1]) / 7
    bits = 3 * math.log(2)  # bytes of the counted targets: 2 (token 1) + 1 (token 0)
    assert ngram_bits_per_byte(train, val, byte_lengths)["unigram"] == pytest.approx(
        -(math.log(p[1]) + math.log(p[0])) / bits)
    # Bigram, Witten-Bell: pairs (0,1)×2, (1,0)×1; c(0)=2, T(0)=1; c(1)=1, T(1)=1.
    p_1_after_0 = (2 + 1 * p[1]) / (2 + 1)
    p_0_after_1 = (1 + 1 * p[0]) / (1 + 1)
    assert ngram_bits_per_byte(train, val, byte_lengths)["bigram"] == pytest.approx(
        -(math.log(p_1_after_0) + math.log(p_0_after_1)) / bits)


def test_bigram_beats_unigram_on_text_with_order():
    rng = np.random.default_rng(0)
    walk = lambda n: np.cumsum(rng.integers(0, 2, n)) % 16  # next token is this one or the one after
    train, val = walk(4096).reshape(64, 64), walk(1024).reshape(16, 64)
    found = ngram_bits_per_byte(train, val, np.ones(16, dtype=np.int64))
    assert found["unigram"] == pytest.approx(4.0, abs=0.05)  # 16 equally likely tokens: 4 bits each
    assert found["bigram"] == pytest.approx(1.0, abs=0.05)  # two equally likely successors: 1 bit


def test_against_chance():
    # 100 pairs: a coin's accuracy stays below 0.5 + 1.96 * 0.05 = 0.598 in 95 % of runs.
    assert against_chance(0.55, 100) == pytest.approx(
        {"accuracy": 0.55, "n": 100, "standard_error": math.sqrt(0.55 * 0.45 / 100), "chance_bound": 0.598,
         "beats_baseline": False})
    assert against_chance(0.62, 100)["beats_baseline"]
    assert not against_chance(0.475, 230)["beats_baseline"]  # issue #16's reward model: below chance


def test_length_rule_takes_the_direction_the_training_pairs_favour():
    train = [("no", "a long answer"), ("short", "much longer"), ("a much longer one", "brief")]  # shorter wins 2 of 3
    held_out = [("ok", "longer reply"), ("a long chosen reply", "meh"), ("same", "four")]  # right, wrong, tie
    assert length_rule(train, held_out) == {"length_rule_prefers": "shorter", "length_rule_accuracy": 1.5 / 3}
    longer = [(r, c) for c, r in train]
    assert length_rule(longer, held_out) == {"length_rule_prefers": "longer", "length_rule_accuracy": 1.5 / 3}
    assert length_rule(longer, [("a long chosen reply", "meh")])["length_rule_accuracy"] == 1.0


def test_change_against_noise():
    rose = change_against_noise([0.0, 0.2, -0.2, 0.0], [1.0, 1.2, 0.8, 1.0])
    assert rose["change"] == pytest.approx(1.0) and rose["beats_baseline"]
    half = 1.96 * math.sqrt(2 * np.var([0.0, 0.2, -0.2, 0.0], ddof=1) / 4)
    assert rose["interval"] == pytest.approx([1.0 - half, 1.0 + half])
    assert not change_against_noise([-1.67, -1.2, -2.1], [-2.06, -1.5, -1.0])["beats_baseline"]  # #16's PPO
