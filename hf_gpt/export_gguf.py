"""`hf-gpt export-gguf`: a decoder folder as one GGUF file that llama.cpp (and Ollama, LM Studio) runs.

Our decoder is GPT-2's graph in llama.cpp's terms: pre-LayerNorm blocks with fused W^Q, W^K, W^V (`attn_qkv`), an
output LayerNorm and an additive position table. Sinusoidal positions are written as that table (the formula
evaluated for every position of the context); RoPE models map onto llama.cpp's `gptneox` graph (rotate-half RoPE,
sequential residual). Token embeddings are stored already multiplied by √d when the model scales them, so the head
(tied to the unscaled embeddings) is written as its own `output` tensor. The tokenizer goes in as llama.cpp's `gpt2`
byte-level BPE (tokens, merges, special tokens as control tokens) with the chat template.
"""

import json
from pathlib import Path

import numpy as np
import torch

GELUS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "gelu_fast")  # llama.cpp's GPT-2/NeoX graphs apply tanh-GELU
DTYPES = ("f32", "f16", "q8_0")


def _require_gguf():
    try:
        import gguf
    except ImportError:
        raise ValueError("GGUF export needs the gguf package: pip install 'hf-gpt[gguf]' (or pip install gguf).") \
            from None
    return gguf


def check_exportable(config) -> str:
    """The llama.cpp architecture for `config`, or a ValueError saying why it has none."""
    if getattr(config, "model_type", None) != "hf_gpt":
        raise ValueError(f"GGUF export is for hf_gpt models; this folder holds a {config.model_type!r} model "
                         "(llama.cpp's convert_hf_to_gguf.py converts the architectures it knows).")
    if config.is_encoder_decoder or not config.is_causal:
        raise ValueError("GGUF export is for the GPT decoder; an encoder (BERT) or encoder-decoder model has no "
                         "llama.cpp graph here.")
    if config.norm_position != "pre":
        raise ValueError("GGUF export needs norm_position='pre': llama.cpp's GPT-2 graph normalises before each "
                         "sublayer, so a post-LN model (Add & Norm) would compute something else.")
    if config.hidden_act not in GELUS:
        raise ValueError(f"GGUF export needs a GELU feed-forward network (llama.cpp's GPT-2 graph hard-codes it); "
                         f"this model uses {config.hidden_act!r}.")
    return "gptneox" if config.position_embedding_type == "rope" else "gpt2"


def _tensors(model, arch: str) -> dict[str, torch.Tensor]:
    """GGUF tensor name → weight, in transformers' (out, in) layout, which GGUF stores as llama.cpp's {in, out}."""
    from .modeling_hf_gpt import sinusoidal_position_encoding

    config, body = model.config, model.model
    d = config.hidden_size
    out = {"token_embd.weight": body.embed_tokens.weight * body.embedding_scale,
           "output_norm.weight": body.norm.weight, "output_norm.bias": body.norm.bias,
           "output.weight": model.lm_head.weight}
    if config.position_embedding_type == "sinusoidal":
        out["position_embd.weight"] = sinusoidal_position_encoding(config.max_position_embeddings, d,
                                                                   config.sinusoidal_base)
    elif config.position_embedding_type == "learned":
        out["position_embd.weight"] = body.embed_positions.weight

    def bias(linear: torch.nn.Linear) -> torch.Tensor:  # llama.cpp's graphs require biases: zeros stand in
        return linear.bias if linear.bias is not None else torch.zeros(linear.out_features)

    for i, block in enumerate(body.layers):
        attn, ffn = block.attention, block.feed_forward
        qkv = (attn.q_proj, attn.k_proj, attn.v_proj)
        out |= {f"blk.{i}.attn_norm.weight": block.attention_norm.weight,
                f"blk.{i}.attn_norm.bias": block.attention_norm.bias,
                f"blk.{i}.attn_qkv.weight": torch.cat([p.weight for p in qkv]),
                f"blk.{i}.attn_qkv.bias": torch.cat([bias(p) for p in qkv]),
                f"blk.{i}.attn_output.weight": attn.o_proj.weight, f"blk.{i}.attn_output.bias": bias(attn.o_proj),
                f"blk.{i}.ffn_norm.weight": block.ffn_norm.weight, f"blk.{i}.ffn_norm.bias": block.ffn_norm.bias,
                f"blk.{i}.ffn_up.weight": ffn.up_proj.weight, f"blk.{i}.ffn_up.bias": bias(ffn.up_proj),
                f"blk.{i}.ffn_down.weight": ffn.down_proj.weight, f"blk.{i}.ffn_down.bias": bias(ffn.down_proj)}
    return {name: t.detach().float().cpu() for name, t in out.items()}


def _add_tensor(writer, gguf, name: str, tensor: torch.Tensor, dtype: str) -> None:
    """Matrices in the chosen type; norms, biases and the position table stay f32 (as llama.cpp's converter keeps
    them); a matrix whose rows do not split into q8_0's 32-value blocks falls back to f16."""
    data = tensor.numpy()
    if data.ndim < 2 or dtype == "f32" or name == "position_embd.weight":
        writer.add_tensor(name, data.astype(np.float32))
    elif dtype == "q8_0" and data.shape[-1] % 32 == 0:
        qtype = gguf.GGMLQuantizationType.Q8_0
        writer.add_tensor(name, gguf.quants.quantize(data.astype(np.float32), qtype), raw_dtype=qtype)
    else:
        writer.add_tensor(name, data.astype(np.float16))


def _add_tokenizer(writer, gguf, tokenizer, vocab_size: int) -> None:
    vocab = {i: token for token, i in tokenizer.get_vocab().items()}
    special = set(tokenizer.all_special_ids)
    tokens = [vocab.get(i, f"[PAD{i}]") for i in range(vocab_size)]
    types = [gguf.TokenType.CONTROL if i in special else gguf.TokenType.NORMAL if i in vocab
             else gguf.TokenType.UNUSED for i in range(vocab_size)]
    merges = json.loads(tokenizer.backend_tokenizer.to_str())["model"]["merges"]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")  # our pre-tokenizer is ByteLevel with GPT-2's split pattern
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
    for name in ("bos", "eos", "pad"):
        token_id = getattr(tokenizer, f"{name}_token_id")
        if token_id is not None:
            getattr(writer, f"add_{name}_token_id")(token_id)
    writer.add_add_bos_token(False)  # as `tokenizer(text)`: the chat template writes the special tokens itself
    if tokenizer.chat_template:  # `{% generation %}` marks reply tokens for SFT's loss; llama.cpp's Jinja lacks it
        template = tokenizer.chat_template.replace("{% generation %}", "").replace("{% endgeneration %}", "")
        writer.add_chat_template(template)


def export_gguf(folder: str | Path, out: str | Path, dtype: str = "f32", trust_remote_code: bool = False) -> Path:
    """Write the decoder in `folder` (a saved folder, a Hub id or a LoRA adapter folder) to the GGUF file `out`."""
    from transformers import AutoModelForCausalLM

    from .loading import load_config, load_model_and_tokenizer

    if dtype not in DTYPES:
        raise ValueError(f"--dtype {dtype!r}: choose one of {', '.join(DTYPES)}.")
    gguf = _require_gguf()
    arch = check_exportable(load_config(folder, trust_remote_code, what="the model to export"))
    tokenizer, model = load_model_and_tokenizer(AutoModelForCausalLM, folder, "the model to export",
                                                trust_remote_code, dtype=torch.float32)
    config, out = model.config, Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(out), arch)
    writer.add_name(Path(str(folder)).name)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_head_count(config.num_attention_heads)
    writer.add_layer_norm_eps(config.layer_norm_eps)
    writer.add_file_type({"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                          "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[dtype])
    if arch == "gptneox":
        writer.add_rope_dimension_count(config.head_dim)
        writer.add_rope_freq_base(config.sinusoidal_base)
        writer.add_parallel_residual(False)
    _add_tokenizer(writer, gguf, tokenizer, config.vocab_size)
    for name, tensor in _tensors(model, arch).items():
        _add_tensor(writer, gguf, name, tensor, dtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out
