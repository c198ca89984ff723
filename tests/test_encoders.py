"""The lecture's other two Transformers from the same blocks: a BERT-style encoder and the encoder-decoder."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from transformers import AutoModelForMaskedLM, AutoModelForSeq2SeqLM, AutoModelForSequenceClassification, pipeline

from hf_gpt import (
    CrossAttention,
    EncoderBlock,
    HfGptForConditionalGeneration,
    HfGptForMaskedLM,
    HfGptForSequenceClassification,
)
from hf_gpt.modeling_hf_gpt import shift_tokens_right
from hf_gpt.seq2seq import chrf, exact_match, lecture_shapes
from hf_gpt.throughput import count_parameters, seq2seq_step
from hf_gpt.world import HELD_OUT_COUNTRIES, translation_pairs


def encoder(tiny_config, **overrides) -> HfGptForMaskedLM:
    torch.manual_seed(0)
    return HfGptForMaskedLM(tiny_config(is_causal=False, **overrides)).eval()


def seq2seq(tiny_config, **overrides) -> HfGptForConditionalGeneration:
    torch.manual_seed(0)
    config = tiny_config(is_encoder_decoder=True, decoder_start_token_id=0, num_encoder_layers=3, **overrides)
    return HfGptForConditionalGeneration(config).eval()


# ---------------------------------------------------------------- encoder (BERT)


def test_encoder_sees_both_sides_decoder_only_the_past(tiny_config, tiny_model):
    ids = torch.randint(3, 300, (2, 9))
    changed = ids.clone()
    changed[:, -1] = 7  # a token to the right of every other position
    bert, gpt = encoder(tiny_config), tiny_model()
    with torch.no_grad():
        assert (bert(changed).logits[:, 0] - bert(ids).logits[:, 0]).abs().max() > 1e-4
        torch.testing.assert_close(gpt(changed).logits[:, :-1], gpt(ids).logits[:, :-1])
    assert all(isinstance(block, EncoderBlock) for block in bert.model.layers)


@pytest.mark.parametrize("position", ["sinusoidal", "learned", "rope"])
def test_encoder_eager_equals_sdpa_with_padding(position, tiny_config):
    model = encoder(tiny_config, position_embedding_type=position)
    ids = torch.randint(3, 300, (2, 8))
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0  # right padding in the second row
    with torch.no_grad():
        sdpa = model(ids, attention_mask=mask).logits
        model.set_attn_implementation("eager")
        eager = model(ids, attention_mask=mask).logits
    torch.testing.assert_close(sdpa[mask.bool()], eager[mask.bool()], atol=1e-5, rtol=1e-4)


def test_encoder_attention_is_a_full_softmax_over_real_tokens(tiny_config):
    model = encoder(tiny_config, attn_implementation="eager")
    ids = torch.randint(3, 300, (1, 6))
    mask = torch.tensor([[1, 1, 1, 1, 0, 0]])
    with torch.no_grad():
        weights = model(ids, attention_mask=mask, output_attentions=True).attentions[0][0]  # (h, L, L)
    torch.testing.assert_close(weights.sum(-1), torch.ones(4, 6))
    assert (weights[:, :4, :4] > 0).all()  # every real token attends to every real token, future included
    assert weights[:, :, 4:].abs().max() < 1e-6  # padding gets nothing


def test_masked_lm_loss_counts_masked_positions_only(tiny_config):
    model = encoder(tiny_config)
    ids = torch.randint(3, 300, (2, 7))
    labels = torch.full_like(ids, -100)
    labels[:, 3] = ids[:, 3]
    with torch.no_grad():
        out = model(ids, labels=labels)
    expected = torch.nn.functional.cross_entropy(out.logits[:, 3], ids[:, 3])
    torch.testing.assert_close(out.loss, expected)


def test_encoder_classifier_pools_the_first_token(tiny_config):
    torch.manual_seed(0)
    model = HfGptForSequenceClassification(tiny_config(is_causal=False, num_labels=2)).eval()
    ids = torch.randint(3, 300, (1, 6))
    padded = torch.cat([ids, torch.full((1, 3), 2)], dim=1)
    with torch.no_grad():
        hidden = model.model(ids).last_hidden_state
        logits = model(ids).logits
        logits_padded = model(padded, attention_mask=(padded != 2).long()).logits
    torch.testing.assert_close(logits, model.score(hidden[:, 0]))
    torch.testing.assert_close(logits, logits_padded, atol=1e-5, rtol=1e-4)


def test_impossible_kinds_are_rejected_with_one_line(tiny_config):
    with pytest.raises(ValueError, match="is_causal=False"):
        HfGptForMaskedLM(tiny_config())
    with pytest.raises(ValueError, match="is_encoder_decoder=True"):
        HfGptForConditionalGeneration(tiny_config())
    with pytest.raises(ValueError, match="num_encoder_layers is only for an encoder-decoder"):
        tiny_config(num_encoder_layers=2)
    with pytest.raises(ValueError, match="drop is_causal=False"):
        tiny_config(is_encoder_decoder=True, is_causal=False)


def test_mask_token_and_fill_mask_pipeline(tmp_path, tokenizer, tiny_config):
    assert tokenizer.mask_token == "<|mask|>" and tokenizer.mask_token_id is not None
    torch.manual_seed(0)
    model = HfGptForMaskedLM(tiny_config(is_causal=False, vocab_size=len(tokenizer))).eval()
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    assert isinstance(AutoModelForMaskedLM.from_pretrained(tmp_path), HfGptForMaskedLM)
    fill = pipeline("fill-mask", model=str(tmp_path), top_k=3)
    out = fill(f"The capital of{tokenizer.mask_token} is Paris.")
    assert len(out) == 3 and all(0 <= o["score"] <= 1 for o in out)
    # The pipeline's top token is the model's argmax at the mask.
    ids = tokenizer(f"The capital of{tokenizer.mask_token} is Paris.", return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(ids).logits[0, (ids[0] == tokenizer.mask_token_id).nonzero().item()]
    assert out[0]["token"] == logits.argmax().item()


# ---------------------------------------------------------------- encoder-decoder


def test_cross_attention_is_its_own_module_reading_the_encoder(tiny_config):
    model = seq2seq(tiny_config)
    assert len(model.model.encoder.layers) == 3 and len(model.model.decoder.layers) == 2
    assert all(isinstance(b.cross_attention, CrossAttention) for b in model.model.decoder.layers)
    assert all(isinstance(b, EncoderBlock) for b in model.model.encoder.layers)
    source = torch.randint(3, 300, (2, 7))
    target = torch.randint(3, 300, (2, 5))
    changed_source = source.clone()
    changed_source[:, -1] = 9
    changed_target = target.clone()
    changed_target[:, -1] = 9
    with torch.no_grad():
        base = model(input_ids=source, decoder_input_ids=target).logits
        # The first target position reads the whole source (cross-attention) ...
        assert (model(input_ids=changed_source, decoder_input_ids=target).logits[:, 0] - base[:, 0]).abs().max() > 1e-4
        # ... but never a later target token (masked self-attention).
        torch.testing.assert_close(model(input_ids=source, decoder_input_ids=changed_target).logits[:, :-1],
                                   base[:, :-1])


def test_shared_embedding_and_tied_head(tiny_config):
    model = seq2seq(tiny_config)
    shared = model.model.encoder.embed_tokens.weight
    assert model.model.decoder.embed_tokens.weight is shared and model.lm_head.weight is shared


@pytest.mark.parametrize("position", ["sinusoidal", "rope"])
def test_seq2seq_cached_generation_equals_recomputed(position, tiny_config):
    model = seq2seq(tiny_config, position_embedding_type=position)
    source = torch.randint(3, 300, (2, 7))
    mask = torch.ones_like(source)
    mask[0, 5:] = 0
    kwargs = dict(input_ids=source, attention_mask=mask, max_new_tokens=8, do_sample=False, min_new_tokens=8)
    cached = model.generate(**kwargs, use_cache=True)
    recomputed = model.generate(**kwargs, use_cache=False)
    assert cached.shape == (2, 9) and torch.equal(cached, recomputed)
    assert (cached[:, 0] == 0).all()  # starts from decoder_start_token_id
    with torch.no_grad():  # and the logits of the last step agree, not only the argmax
        full = model(input_ids=source, attention_mask=mask, decoder_input_ids=cached).logits[:, -1]
        out = model(input_ids=source, attention_mask=mask, decoder_input_ids=cached[:, :-1], use_cache=True)
        step = model(encoder_outputs=(out.encoder_last_hidden_state,), attention_mask=mask,
                     decoder_input_ids=cached[:, -1:], cache=out.cache).logits[:, -1]
    torch.testing.assert_close(step, full, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("options", [{}, {"norm_position": "post", "hidden_act": "relu"},
                                     {"position_embedding_type": "learned"}])
def test_seq2seq_eager_equals_sdpa(options, tiny_config):
    model = seq2seq(tiny_config, **options)
    source, target = torch.randint(3, 300, (2, 7)), torch.randint(3, 300, (2, 5))
    mask = torch.ones_like(source)
    mask[1, 4:] = 0
    with torch.no_grad():
        sdpa = model(input_ids=source, attention_mask=mask, decoder_input_ids=target).logits
        model.set_attn_implementation("eager")
        eager = model(input_ids=source, attention_mask=mask, decoder_input_ids=target).logits
    torch.testing.assert_close(sdpa, eager, atol=1e-5, rtol=1e-4)


def test_labels_are_shifted_into_decoder_inputs(tiny_config):
    labels = torch.tensor([[5, 6, 7, -100]])
    assert shift_tokens_right(labels, pad_token_id=2, decoder_start_token_id=0).tolist() == [[0, 5, 6, 7]]
    model = seq2seq(tiny_config)
    source = torch.randint(3, 300, (1, 6))
    with torch.no_grad():
        out = model(input_ids=source, labels=labels)
        logits = model(input_ids=source, decoder_input_ids=torch.tensor([[0, 5, 6, 7]])).logits
    expected = torch.nn.functional.cross_entropy(logits[0, :3], labels[0, :3])
    torch.testing.assert_close(out.loss, expected)


def test_lecture_shapes_from_real_tensors(tiny_config):
    model = seq2seq(tiny_config)
    source, target = torch.randint(3, 300, (1, 7)), torch.randint(3, 300, (1, 5))
    rows = {(r["where"], r["lecture"]): r["shape"] for r in lecture_shapes(model, source, target)}
    L, T, h, d_k, d, vocab = 7, 5, 4, 8, 32, 300
    assert rows[("encoder self-attention", "(L, d_model)")] == (L, d)
    assert rows[("encoder self-attention", "(h, L, d_k)")] == (h, L, d_k)
    assert rows[("encoder self-attention", "(h, L, L)")] == (h, L, L)
    assert rows[("decoder masked self-attention", "(h, T, T)")] == (h, T, T)
    assert rows[("cross-attention", "(h, T, d_k)")] == (h, T, d_k)
    assert rows[("cross-attention", "(h, L, d_k)")] == (h, L, d_k)
    assert rows[("cross-attention", "(h, T, L)")] == (h, T, L)
    assert rows[("decoder output", "(T, vocab)")] == (T, vocab)
    assert model.config._attn_implementation == "sdpa"  # restored


def test_seq2seq_training_flops_formula(tiny_config):
    model = seq2seq(tiny_config)
    tokens, flops = seq2seq_step(model, (4, 7), (4, 5))
    embedding = 300 * 32
    n_encoder = count_parameters(model.model.encoder) - embedding
    n_decoder = count_parameters(model) - n_encoder
    expected = 3 * 4 * (7 * (2 * n_encoder + 4 * 3 * 32 * 7) + 5 * (2 * n_decoder + 4 * 2 * 32 * (5 + 7)))
    assert tokens == 4 * 12 and flops == expected


def test_save_load_through_auto_classes(tmp_path, tiny_config):
    model = seq2seq(tiny_config)
    model.save_pretrained(tmp_path / "s2s")
    loaded = AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "s2s").eval()
    source, target = torch.randint(3, 300, (2, 7)), torch.randint(3, 300, (2, 5))
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=source, decoder_input_ids=target).logits,
                                   model(input_ids=source, decoder_input_ids=target).logits, atol=0, rtol=0)
    bert = encoder(tiny_config)
    bert.save_pretrained(tmp_path / "bert")
    classifier = AutoModelForSequenceClassification.from_pretrained(tmp_path / "bert", num_labels=3)
    assert not classifier.config.is_causal
    torch.testing.assert_close(classifier.model.embed_tokens.weight, bert.model.embed_tokens.weight)


REMOTE = textwrap.dedent("""
    import json, sys
    sys.modules["hf_gpt"] = None  # only the folder's code may run
    import torch
    from transformers import AutoModelForMaskedLM, AutoModelForSeq2SeqLM
    bert = AutoModelForMaskedLM.from_pretrained(sys.argv[1], trust_remote_code=True).eval()
    s2s = AutoModelForSeq2SeqLM.from_pretrained(sys.argv[2], trust_remote_code=True).eval()
    ids = torch.arange(3, 10).unsqueeze(0)
    with torch.no_grad():
        mlm = bert(ids).logits.sum().item()
    out = s2s.generate(input_ids=ids, max_new_tokens=5, min_new_tokens=5, do_sample=False)
    print(json.dumps({"kinds": [type(bert).__module__, type(s2s).__name__], "mlm": mlm, "gen": out[0].tolist()}))
""")


@pytest.mark.slow  # a subprocess
def test_encoder_and_seq2seq_load_as_remote_code(tmp_path, tiny_config):
    bert, model = encoder(tiny_config), seq2seq(tiny_config)
    bert.save_pretrained(tmp_path / "bert")
    model.save_pretrained(tmp_path / "s2s")
    env = {**os.environ, "PYTHONPATH": "", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    result = subprocess.run([sys.executable, "-c", REMOTE, str(tmp_path / "bert"), str(tmp_path / "s2s")],
                            capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["kinds"][0].startswith("transformers_modules")
    assert report["kinds"][1] == "HfGptForConditionalGeneration"
    ids = torch.arange(3, 10).unsqueeze(0)
    with torch.no_grad():
        assert abs(report["mlm"] - bert(ids).logits.sum().item()) < 1e-3
    assert report["gen"] == model.generate(input_ids=ids, max_new_tokens=5, min_new_tokens=5,
                                           do_sample=False)[0].tolist()


# ---------------------------------------------------------------- translation data and metrics


def test_translation_held_out_sentences_are_new_but_their_words_are_trained():
    train, held = translation_pairs("train"), translation_pairs("held_out")
    assert len(held) == 24 and not {r["source"] for r in train} & {r["source"] for r in held}
    train_text = " ".join(r["source"] + " " + r["target"] for r in train)
    for row in held:
        if row["source"].startswith("The capital of"):
            country, capital = row["source"][len("The capital of "):-1].split(" is ")
            assert country in HELD_OUT_COUNTRIES and country in train_text and capital in train_text
            ko_country, ko_capital = row["target"].removesuffix("입니다.").split("의 수도는 ")
            assert ko_country in train_text and ko_capital in train_text


def test_chrf_and_exact_match():
    assert chrf(["프랑스의 수도는 파리입니다."], ["프랑스의 수도는 파리입니다."]) == pytest.approx(100.0)
    assert 0 < chrf(["프랑스의 수도는 로마입니다."], ["프랑스의 수도는 파리입니다."]) < 100
    assert exact_match(["a", "b "], ["a", "c"]) == 0.5
