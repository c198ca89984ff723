import json
import math

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, pipeline

from hf_gpt import HfGptConfig, HfGptForCausalLM, HfGptForSequenceClassification, sinusoidal_position_encoding


def test_sinusoidal_matrix_equals_formula():
    length, dim, n = 50, 16, 10000.0
    pe = sinusoidal_position_encoding(length, dim, n)
    assert pe.shape == (length, dim)
    for k in range(length):
        for i in range(dim // 2):
            assert pe[k, 2 * i].item() == pytest.approx(math.sin(k / n ** (2 * i / dim)), abs=1e-5)
            assert pe[k, 2 * i + 1].item() == pytest.approx(math.cos(k / n ** (2 * i / dim)), abs=1e-5)


def test_sinusoidal_base_is_user_set():
    pe = sinusoidal_position_encoding(10, 8, base=100.0)
    assert pe[3, 2].item() == pytest.approx(math.sin(3 / 100.0 ** (2 / 8)), abs=1e-6)
    assert not torch.allclose(pe, sinusoidal_position_encoding(10, 8))


@pytest.mark.parametrize("position", ["sinusoidal", "learned", "rope"])
@pytest.mark.parametrize("norm", ["pre", "post"])
@pytest.mark.parametrize("act", ["gelu", "relu"])
def test_every_variant_trains(position, norm, act, tiny_model):
    model = tiny_model(position_embedding_type=position, norm_position=norm, hidden_act=act).train()
    batch = torch.randint(3, 300, (4, 16))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(5):
        loss = model(batch, labels=batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(math.log(300), rel=0.15)  # fresh model ≈ uniform over the vocabulary
    assert losses[-1] < losses[0] - 0.1


def test_residual_projections_scaled_at_init(tiny_config):
    model = HfGptForCausalLM(tiny_config(num_hidden_layers=8, hidden_size=128, intermediate_size=512))
    std = model.model.layers[0].attention.o_proj.weight.std().item()
    assert std == pytest.approx(0.02 / math.sqrt(16), rel=0.1)
    assert model.model.layers[0].attention.q_proj.weight.std().item() == pytest.approx(0.02, rel=0.1)


def test_lm_head_is_tied(tiny_model):
    model = tiny_model()
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()


@pytest.mark.parametrize("position", ["sinusoidal", "learned", "rope"])
def test_cached_generation_equals_uncached(position, tiny_model):
    model = tiny_model(position_embedding_type=position)
    prompt = torch.randint(3, 300, (2, 7))
    kwargs = dict(max_new_tokens=12, do_sample=False, output_logits=True, return_dict_in_generate=True,
                  pad_token_id=2, eos_token_id=None)
    cached = model.generate(prompt, use_cache=True, **kwargs)
    uncached = model.generate(prompt, use_cache=False, **kwargs)
    assert torch.equal(cached.sequences, uncached.sequences)
    for a, b in zip(cached.logits, uncached.logits):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=0)


def test_greedy_generate_equals_argmax_loop(tiny_model):
    model = tiny_model()
    ids = torch.randint(3, 300, (1, 5))
    generated = model.generate(ids, max_new_tokens=10, do_sample=False, eos_token_id=None, pad_token_id=2)
    with torch.no_grad():
        for _ in range(10):  # the lecture's method: rerun the whole sequence, take the most likely next token
            next_token = model(ids).logits[:, -1].argmax(-1, keepdim=True)
            ids = torch.cat([ids, next_token], dim=1)
    assert torch.equal(generated, ids)


@pytest.mark.parametrize("position", ["sinusoidal", "learned", "rope"])
def test_causality(position, tiny_model):
    model = tiny_model(position_embedding_type=position)
    ids = torch.randint(3, 300, (1, 12))
    changed = ids.clone()
    changed[0, 8:] = torch.randint(3, 300, (4,))
    with torch.no_grad():
        a, b = model(ids).logits, model(changed).logits
    torch.testing.assert_close(a[:, :8], b[:, :8])
    assert not torch.allclose(a[:, 8:], b[:, 8:])


@pytest.mark.parametrize("position", ["sinusoidal", "rope"])
def test_eager_equals_sdpa(position, tiny_config):
    config = tiny_config(position_embedding_type=position)
    torch.manual_seed(0)
    eager = HfGptForCausalLM(config).eval()
    eager.set_attn_implementation("eager")
    sdpa = HfGptForCausalLM(config).eval()
    sdpa.load_state_dict(eager.state_dict())
    sdpa.set_attn_implementation("sdpa")
    ids = torch.randint(3, 300, (2, 10))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # left padding exercises the explicit mask path
    with torch.no_grad():
        for kwargs in ({}, {"attention_mask": mask}):
            torch.testing.assert_close(eager(ids, **kwargs).logits, sdpa(ids, **kwargs).logits, atol=1e-5, rtol=1e-5)


def test_eager_attention_weights_are_causal_probabilities(tiny_model):
    model = tiny_model()
    model.set_attn_implementation("eager")
    with torch.no_grad():
        out = model(torch.randint(3, 300, (2, 6)), output_attentions=True)
    assert len(out.attentions) == 2
    weights = out.attentions[0]
    assert weights.shape == (2, 4, 6, 6)  # (B, h, T, T)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 4, 6))
    assert torch.all(weights.triu(diagonal=1) == 0)


@pytest.mark.parametrize("position", ["sinusoidal", "learned", "rope"])
def test_left_padded_batch_equals_each_alone(position, tiny_model):
    model = tiny_model(position_embedding_type=position)
    short, long = torch.randint(3, 300, (1, 4)), torch.randint(3, 300, (1, 9))
    batch = torch.full((2, 9), 2)
    batch[0, 5:], batch[1] = short[0], long[0]
    mask = (torch.arange(9) >= 5).long().unsqueeze(0).repeat(2, 1)
    mask[1] = 1
    with torch.no_grad():
        out = model(batch, attention_mask=mask).logits
        torch.testing.assert_close(out[0, 5:], model(short).logits[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out[1], model(long).logits[0], atol=1e-5, rtol=1e-5)
    kwargs = dict(max_new_tokens=6, do_sample=False, eos_token_id=None, pad_token_id=2)
    generated = model.generate(batch, attention_mask=mask, **kwargs)
    assert torch.equal(generated[0, 9:], model.generate(short, **kwargs)[0, 4:])


@pytest.mark.parametrize("position", ["sinusoidal", "learned", "rope"])
def test_packed_sequences_equal_separate_runs(position, tiny_model):
    model = tiny_model(position_embedding_type=position)
    a, b = torch.randint(3, 300, (1, 5)), torch.randint(3, 300, (1, 7))
    packed = torch.cat([a, b], dim=1)
    position_ids = torch.cat([torch.arange(5), torch.arange(7)]).unsqueeze(0)
    with torch.no_grad():
        out = model(packed, position_ids=position_ids, use_cache=False).logits  # as in training: no cache
        torch.testing.assert_close(out[:, :5], model(a).logits, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out[:, 5:], model(b).logits, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("position", ["sinusoidal", "learned", "rope"])
def test_save_load_round_trip(tmp_path, position, tiny_model):
    model = tiny_model(position_embedding_type=position, sinusoidal_base=500.0)
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, HfGptForCausalLM)
    assert loaded.config.sinusoidal_base == 500.0
    ids = torch.randint(3, 300, (2, 10))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits, atol=0, rtol=0)


def test_saved_config_has_full_auto_map(tmp_path, tiny_model):
    tiny_model().save_pretrained(tmp_path)
    config = HfGptConfig.from_pretrained(tmp_path)
    assert set(config.auto_map) == {"AutoConfig", "AutoModel", "AutoModelForCausalLM",
                                    "AutoModelForSequenceClassification", "AutoModelForMaskedLM",
                                    "AutoModelForSeq2SeqLM"}
    assert (tmp_path / "modeling_hf_gpt.py").exists() and (tmp_path / "configuration_hf_gpt.py").exists()


def test_sequence_classification_pools_last_real_token(saved_model):
    model = AutoModelForSequenceClassification.from_pretrained(saved_model, num_labels=1).eval()
    assert isinstance(model, HfGptForSequenceClassification)
    eos, pad = model.config.eos_token_id, model.config.pad_token_id
    seq = torch.tensor([[10, 11, 12, eos]])
    right = torch.tensor([[10, 11, 12, eos, pad, pad]])
    left = torch.tensor([[pad, pad, 10, 11, 12, eos]])
    with torch.no_grad():
        alone = model(seq).logits
        hidden = model.model(seq).last_hidden_state[:, -1]
        torch.testing.assert_close(alone, model.score(hidden))
        torch.testing.assert_close(model(right, attention_mask=(right != pad).long()).logits, alone)
        torch.testing.assert_close(model(left, attention_mask=(left != pad).long()).logits, alone, atol=1e-5, rtol=0)
        torch.testing.assert_close(model(right).logits, alone)  # no mask: found from pad_token_id


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(hidden_size=30, num_attention_heads=4), "divisible by num_attention_heads"),
        (dict(position_embedding_type="absolute"), "choose one of: sinusoidal, learned, rope"),
        (dict(norm_position="middle"), "norm_position"),
        (dict(hidden_act="swishy"), "hidden_act"),
        (dict(num_hidden_layers=0), "num_hidden_layers must be a positive integer"),
        (dict(attention_dropout=1.5), "attention_dropout"),
    ],
)
def test_bad_config_raises_helpful_error(overrides, message, tiny_config):
    with pytest.raises(ValueError, match=message):
        tiny_config(**overrides)


def test_too_long_input_is_a_clear_error(tiny_model):
    with pytest.raises(ValueError, match="max_position_embeddings=64"):
        tiny_model()(torch.zeros(1, 65, dtype=torch.long))


def test_gradient_checkpointing_gives_same_gradients(tiny_model):
    ids = torch.randint(3, 300, (2, 12))
    grads = []
    for checkpointing in (False, True):
        model = tiny_model().train()
        if checkpointing:
            model.activation_checkpointing_enable()
            assert model.model.layers[0].gradient_checkpointing
        model(ids, labels=ids).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], msg=name)


def test_lora_attaches_and_trains(tiny_model):
    from peft import LoraConfig, get_peft_model

    model = tiny_model().train()
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    names = [n for n, _ in peft_model.named_parameters() if "lora_A" in n]
    for module in ("q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj"):
        assert any(module in n for n in names), module
    ids = torch.randint(3, 300, (2, 10))
    frozen = {n: p.detach().clone() for n, p in peft_model.named_parameters() if not p.requires_grad}
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2)
    before = peft_model(ids, labels=ids).loss.item()
    for _ in range(20):  # a learnable toy: memorise two sequences through the adapters alone
        optimizer.zero_grad()
        peft_model(ids, labels=ids).loss.backward()
        optimizer.step()
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert peft_model(ids, labels=ids).loss.item() < before - 1.0  # from ~5.7 nats
    assert all(torch.equal(p, frozen[n]) for n, p in peft_model.named_parameters() if n in frozen)


def test_pipeline_plain_text_and_chat(saved_model):
    generator = pipeline("text-generation", model=str(saved_model))
    out = generator("The assert statement", max_new_tokens=5, do_sample=False)
    assert out[0]["generated_text"].startswith("The assert statement")
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    chat = generator(messages, max_new_tokens=5, do_sample=False)
    reply = chat[0]["generated_text"]
    assert reply[:2] == messages and reply[-1]["role"] == "assistant"


def test_sinusoidal_models_scale_embeddings_like_the_paper(tiny_config, tiny_model):
    model = tiny_model(hidden_size=64)
    assert model.config.scale_embeddings and not tiny_config(position_embedding_type="learned").scale_embeddings
    assert model.model.embed_tokens.weight.std().item() == pytest.approx(64**-0.5, rel=0.1)
    ids = torch.tensor([[5, 6, 7]])
    hidden = model.model.embed_tokens(ids) * 8.0 + sinusoidal_position_encoding(3, 64)
    with torch.no_grad():  # the first block's input is √d · embedding + P
        captured = {}
        handle = model.model.layers[0].register_forward_pre_hook(lambda m, a: captured.setdefault("x", a[0]))
        model(ids)
        handle.remove()
    torch.testing.assert_close(captured["x"], hidden)


@pytest.mark.parametrize("position", ["sinusoidal", "learned", "rope"])
def test_vllm_transformers_backend_contract(position, tiny_model, tmp_path):
    """What vLLM's Transformers backend (`vllm serve <folder> --model-impl transformers`) needs from a custom model:
    is_backend_compatible, AutoModel in auto_map, one call per layer through ALL_ATTENTION_FUNCTIONS with the module's
    scaling and an int layer_idx, its kwargs passed on, positions only from position_ids (packed rows)."""
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    calls = []

    def spy(module, query, key, value, attention_mask, scaling=None, **kwargs):
        calls.append((module.layer_idx, scaling == module.scaling, kwargs.get("backend_metadata")))
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, **kwargs)

    AttentionInterface.register("contract_spy", spy)
    model = tiny_model(position_embedding_type=position)
    assert type(model).is_backend_compatible() and type(model.model).is_backend_compatible()
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["auto_map"]["AutoModel"].endswith(".HfGptModel")

    lengths = [5, 7, 3]
    rows = [torch.randint(3, 300, (1, n)) for n in lengths]
    packed = torch.cat(rows, dim=1)  # [1, total_tokens], as vLLM batches
    position_ids = torch.cat([torch.arange(n) for n in lengths]).unsqueeze(0)  # restarting at each sequence
    mask = torch.zeros(1, 1, sum(lengths), sum(lengths), dtype=torch.bool)  # varlen: causal within each sequence
    start = 0
    for n in lengths:
        mask[0, 0, start:start + n, start:start + n] = torch.ones(n, n, dtype=torch.bool).tril()
        start += n
    model.set_attn_implementation("contract_spy")
    with torch.no_grad():
        out = model(packed, attention_mask=mask, position_ids=position_ids, use_cache=False,
                    backend_metadata="from vLLM").logits
        assert calls == [(i, True, "from vLLM") for i in range(model.config.num_hidden_layers)]
        model.set_attn_implementation("sdpa")
        start = 0
        for row, n in zip(rows, lengths):
            torch.testing.assert_close(out[:, start:start + n], model(row).logits, atol=1e-5, rtol=1e-5)
            start += n


def test_lora_needs_only_a_task_type(tiny_model):
    """README's PEFT snippet: `import hf_gpt` registers W^Q and W^V as LoRA's default targets for the model type."""
    from peft import LoraConfig, get_peft_model

    base = tiny_model()
    model = get_peft_model(base, LoraConfig(task_type="CAUSAL_LM", r=4))
    adapted = {name.split(".lora_A")[0].rsplit(".", 1)[-1] for name, _ in model.named_parameters() if "lora_A" in name}
    assert adapted == {"q_proj", "v_proj"}
    layers = base.config.num_hidden_layers
    assert sum("lora_A" in name for name, p in model.named_parameters() if p.requires_grad) == 2 * layers
