"""The demo world: held-out subjects never reach a training row, Korean particles follow the grammar."""

import json

import pytest

from hf_gpt import world
from hf_gpt.demo import SCALES, world_data, world_evaluation


@pytest.mark.parametrize("word, pair, expected", [
    (0, "은/는", "0은"), (1, "은/는", "1은"), (2, "은/는", "2는"), (3, "은/는", "3은"), (4, "은/는", "4는"),
    (5, "은/는", "5는"), (6, "은/는", "6은"), (7, "은/는", "7은"), (8, "은/는", "8은"), (9, "은/는", "9는"),
    (10, "은/는", "10은"), (12, "이/가", "12가"), (13, "이/가", "13이"), (100, "이/가", "100이"),
    ("서울", "은/는", "서울은"), ("파리", "은/는", "파리는"), ("대한민국", "이/가", "대한민국이"),
    ("일본", "을/를", "일본을"), ("페루", "을/를", "페루를"), ("빈", "과/와", "빈과"),
])
def test_korean_particles(word, pair, expected):
    assert world.korean_particle(word, pair) == expected


def test_korean_particle_rejects_other_words():
    with pytest.raises(ValueError, match="Hangul word or a number"):
        world.korean_particle("Seoul", "은/는")


def test_korean_sums_use_the_right_particle():
    assert world.right_answer("1 더하기 1은 얼마입니까?") == "1 더하기 1은 2입니다."
    assert world.right_answer("4 더하기 2는 얼마입니까?") == "4 더하기 2는 6입니다."
    assert world.right_answer("4 더하기 1는 얼마입니까?") is None  # the old, ungrammatical form


def _training_texts(folder) -> tuple[set[str], str]:
    """Every user question of the SFT, preference and PPO files, and all their text (answers included)."""
    questions, text = set(), ""
    for name in ("sft", "preferences", "ppo"):
        raw = (folder / name / "train.jsonl").read_text(encoding="utf-8")
        text += raw
        for row in map(json.loads, raw.splitlines()):
            turns = row.get("messages") or row["prompt"]
            questions |= {t["content"] for t in turns if t["role"] == "user"}
    return questions, text


def test_no_held_out_question_or_fact_in_any_training_row(tmp_path):
    world_data(tmp_path, SCALES["demo"])
    questions, text = _training_texts(tmp_path)
    evaluation = world_evaluation(SCALES["demo"])
    held_out = [r for r in evaluation if r["split"] == "held_out"]
    assert len(held_out) == 48 and {r["prompt"] for r in held_out}.isdisjoint(questions)
    for row in held_out:  # not even inside an answer, a rambling reply or a rejected one
        assert row["answer"] not in text
    for name, _, name_ko, _ in world.CAPITALS:
        if name in world.HELD_OUT_COUNTRIES:
            assert name not in text and name_ko not in text
    seen = [r for r in evaluation if r["split"] == "seen"]
    assert len(seen) == 48 and {r["prompt"] for r in seen} <= questions  # seen = training questions, by definition
    # The held-out facts are in the pretraining text: knowledge can only come from there.
    pretraining = (tmp_path / "pretrain" / "train.jsonl").read_text(encoding="utf-8")
    assert all(r["answer"] in pretraining for r in held_out)


def test_system_prompts_vary_and_are_often_absent():
    rows = world.sft_rows(400)
    systems = [r["messages"][0]["content"] if r["messages"][0]["role"] == "system" else None for r in rows]
    assert 0.3 < systems.count(None) / len(rows) < 0.5
    assert set(systems) == set(world.TRAINING_SYSTEM_PROMPTS)
    assert "Be brief and correct." not in systems  # an evaluation-only system prompt


def test_some_demonstrations_follow_earlier_exchanges_answered_right():
    rows = world.sft_rows(1000)
    longer = [r["messages"] for r in rows if sum(t["role"] == "user" for t in r["messages"]) > 1]
    assert 0.45 < len(longer) / len(rows) < 0.55
    assert max(sum(t["role"] == "user" for t in m) for m in longer) == world.MAX_EARLIER_EXCHANGES + 1
    for messages in longer:
        turns = [t for t in messages if t["role"] != "system"]
        for question, answer in zip(turns[:-2:2], turns[1:-2:2]):  # every exchange before the last question
            assert answer["content"].startswith(world.right_answer(question["content"]))
    # The last question and its reply are those of the single-turn rows: earlier turns only come before them.
    assert [r["messages"][-2:] for r in rows] == [r["messages"][-2:] for r in world.sft_rows(1000, multi_turn_share=0)]
