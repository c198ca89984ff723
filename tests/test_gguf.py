"""`hf-gpt export-gguf`: the file holds the model as llama.cpp's GPT-2 (or GPT-NeoX) graph reads it, the tokenizer and
the chat template; models it cannot hold are refused with one line. Where llama.cpp's Python bindings are importable
(bench/gguf_check.sh builds them), llama.cpp's own logits are compared with transformers'."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from hf_gpt.export_gguf import export_gguf
from hf_gpt.modeling_hf_gpt import sinusoidal_position_encoding

gguf = pytest.importorskip("gguf", reason="the gguf package is in the dev extra (hf-gpt[gguf])")
ROOT = Path(__file__).resolve().parents[1]


def read(path: Path) -> tuple[dict, dict]:
    reader = gguf.GGUFReader(str(path))
    fields = {name: field.contents() for name, field in reader.fields.items()}
    return fields, {t.name: t for t in reader.tensors}


def as_torch(tensor) -> torch.Tensor:
    """A GGUF tensor back in transformers' (out, in) layout, dequantised."""
    data = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
    return torch.from_numpy(np.array(data, dtype=np.float32).reshape(tuple(reversed(tensor.shape.tolist()))))


@pytest.fixture(params=["sinusoidal", "learned", "rope"])
def folder(request, model_folder, tokenizer, tmp_path) -> Path:
    return model_folder(tmp_path, tokenizer, position_embedding_type=request.param)


def test_weights_metadata_and_tokenizer_round_trip(folder, tokenizer, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(folder)
    config, body = model.config, model.model
    fields, tensors = read(export_gguf(folder, tmp_path / "m.gguf"))
    arch = "gptneox" if config.position_embedding_type == "rope" else "gpt2"
    assert fields["general.architecture"] == arch
    assert fields[f"{arch}.context_length"] == config.max_position_embeddings
    assert fields[f"{arch}.block_count"] == config.num_hidden_layers
    assert fields[f"{arch}.attention.head_count"] == config.num_attention_heads
    assert fields[f"{arch}.feed_forward_length"] == config.intermediate_size
    # the embedding as the model adds it (× √d when scaled); the head as the model multiplies by it (unscaled)
    assert torch.allclose(as_torch(tensors["token_embd.weight"]), body.embed_tokens.weight * body.embedding_scale)
    assert torch.equal(as_torch(tensors["output.weight"]), model.lm_head.weight)
    attention = body.layers[1].attention
    qkv = torch.cat([attention.q_proj.weight, attention.k_proj.weight, attention.v_proj.weight])
    assert torch.equal(as_torch(tensors["blk.1.attn_qkv.weight"]), qkv)
    assert torch.equal(as_torch(tensors["blk.1.ffn_down.weight"]), body.layers[1].feed_forward.down_proj.weight)
    if config.position_embedding_type == "sinusoidal":
        table = sinusoidal_position_encoding(config.max_position_embeddings, config.hidden_size)
        assert torch.equal(as_torch(tensors["position_embd.weight"]), table)
    elif config.position_embedding_type == "learned":
        assert torch.equal(as_torch(tensors["position_embd.weight"]), body.embed_positions.weight)
    else:
        assert "position_embd.weight" not in tensors
        assert fields["gptneox.rope.dimension_count"] == config.head_dim
        assert fields["gptneox.use_parallel_residual"] is False
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    assert fields["tokenizer.ggml.tokens"][:len(vocab)] == [token for token, _ in vocab]
    merges = json.loads(tokenizer.backend_tokenizer.to_str())["model"]["merges"]
    assert fields["tokenizer.ggml.merges"] == [" ".join(m) for m in merges]
    assert fields["tokenizer.ggml.eos_token_id"] == tokenizer.eos_token_id
    control = [i for i, kind in enumerate(fields["tokenizer.ggml.token_type"]) if kind == gguf.TokenType.CONTROL]
    assert control == sorted(tokenizer.all_special_ids)
    template = fields["tokenizer.chat_template"]
    assert "{% generation %}" not in template and template == tokenizer.chat_template.replace(
        "{% generation %}", "").replace("{% endgeneration %}", "")


def test_smaller_types_round_matrices_only(saved_model, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(saved_model)
    sizes = {}
    for dtype in ("f32", "f16", "q8_0"):
        path = export_gguf(saved_model, tmp_path / f"{dtype}.gguf", dtype=dtype)
        sizes[dtype] = path.stat().st_size
        _, tensors = read(path)
        assert tensors["blk.0.attn_norm.weight"].tensor_type == gguf.GGMLQuantizationType.F32
        assert tensors["position_embd.weight"].tensor_type == gguf.GGMLQuantizationType.F32
        qkv = tensors["blk.0.attn_qkv.weight"]
        assert qkv.tensor_type == gguf.GGMLQuantizationType[dtype.upper()]
        weight = model.model.layers[0].feed_forward.up_proj.weight
        error = (as_torch(tensors["blk.0.ffn_up.weight"]) - weight).abs().max().item()
        assert error <= {"f32": 0, "f16": 1e-3, "q8_0": 1e-2}[dtype] * weight.abs().max().item()
    assert sizes["f32"] > sizes["f16"] > sizes["q8_0"]


@pytest.mark.parametrize(("overrides", "says"), [
    ({"norm_position": "post"}, "norm_position='pre'"),
    ({"hidden_act": "relu"}, "GELU"),
    ({"is_causal": False}, "GPT decoder"),
])
def test_what_llama_cpp_cannot_run_is_refused_with_one_line(model_folder, tokenizer, tmp_path, overrides, says):
    from hf_gpt.cli import main

    folder = model_folder(tmp_path, tokenizer, **overrides)
    with pytest.raises(SystemExit) as stop:
        main(["export-gguf", str(folder), str(tmp_path / "x.gguf")])
    message = str(stop.value.code)
    assert message.startswith("hf-gpt: error: ") and says in message and "\n" not in message
    assert not (tmp_path / "x.gguf").exists()


def test_the_cli_writes_a_file_a_reader_opens(saved_model, tmp_path):
    out = tmp_path / "deep" / "model.gguf"
    done = subprocess.run([sys.executable, "-m", "hf_gpt.cli", "export-gguf", str(saved_model), str(out),
                           "--dtype", "q8_0"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "q8_0" in done.stdout and read(out)[0]["general.file_type"] == gguf.LlamaFileType.MOSTLY_Q8_0


def llama_cpp_or_skip():
    try:
        import llama_cpp  # noqa: F401
    except (ImportError, OSError) as err:
        pytest.skip(f"llama.cpp's Python bindings are not importable ({err}): bash bench/gguf_check.sh builds them "
                    "and runs this comparison on the demo's models.")


@pytest.mark.parametrize("dtype", ["f32", "q8_0"])
def test_llama_cpp_computes_the_same_logits(folder, tokenizer, tmp_path, dtype):
    llama_cpp_or_skip()
    from llama_cpp import Llama

    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    ids = tokenizer("The capital of Korea is Seoul. 대한민국의 수도는 서울입니다.")["input_ids"]
    with torch.no_grad():
        ours = model(torch.tensor([ids])).logits[0].numpy()
    llm = Llama(str(export_gguf(folder, tmp_path / "m.gguf", dtype=dtype)), n_ctx=model.config.max_position_embeddings,
                logits_all=True, verbose=False, n_threads=1)
    llm.eval(ids)
    theirs = np.array(llm.scores[:len(ids)])
    llm.close()
    assert np.abs(ours - theirs).max() < {"f32": 1e-3, "q8_0": 2e-2}[dtype] * max(1.0, np.abs(ours).max())


def test_llama_cpp_reproduces_the_demos_greedy_replies(demo_run, tmp_path):
    llama_cpp_or_skip()
    out, _ = demo_run
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "gguf_check.py"), str(out / "base"), str(out / "ppo")],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr[-2000:]
