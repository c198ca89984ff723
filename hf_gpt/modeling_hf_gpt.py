"""hf_gpt: a GPT (decoder-only Transformer) in one file, named the way the lecture teaches it, and from the same
blocks the lecture's two other Transformers: BERT (a bidirectional encoder) and the encoder-decoder.

Reading order: position encodings → scaled dot-product attention → MultiHeadAttention (and CrossAttention) →
FeedForward → DecoderBlock (and EncoderBlock) → HfGptModel → heads (causal LM; sequence classification for reward
and value models; masked LM) → the encoder-decoder (HfGptSeq2SeqModel, HfGptForConditionalGeneration).

Design choices, and why:
- Self-contained (torch, transformers and the config only), so a saved folder also runs as Hub remote code.
- Attention goes through transformers' ``ALL_ATTENTION_FUNCTIONS`` (SDPA by default); the eager path below is the
  lecture's formula and the one that returns attention weights for attention maps.
- Sinusoidal and rotary tables are computed from ``position_ids`` in ``forward``, not stored as buffers: nothing to
  go stale when ``from_pretrained`` builds the model on the meta device, and left padding never shifts positions.
"""

import copy
import math
from collections.abc import Callable

import torch
from torch import nn
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache, DynamicCache, EncoderDecoderCache
from transformers.generation import GenerationMixin
from transformers.masking_utils import create_bidirectional_mask, create_causal_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import (
    BaseModelOutput,
    BaseModelOutputWithPastAndCrossAttentions,
    CausalLMOutputWithPast,
    MaskedLMOutput,
    Seq2SeqLMOutput,
    Seq2SeqModelOutput,
    SequenceClassifierOutputWithPast,
)
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, PreTrainedModel, slice_logits_to_keep
from transformers.processing_utils import Unpack
from transformers.utils import ModelOutput, TransformersKwargs, can_return_tuple
from transformers.utils.generic import merge_with_config_defaults
from transformers.utils.output_capturing import OutputRecorder, capture_outputs

from .configuration_hf_gpt import HfGptConfig


def sinusoidal_position_encoding(positions: int | torch.Tensor, dim: int, base: float = 10000.0) -> torch.Tensor:
    """P(k, 2i) = sin(k / n^(2i/d)), P(k, 2i+1) = cos(k / n^(2i/d)); an int L gives the (L, d) matrix."""
    if isinstance(positions, int):
        positions = torch.arange(positions)
    k = positions.to(torch.float32).unsqueeze(-1)  # (..., 1)
    two_i = torch.arange(0, dim, 2, dtype=torch.float32, device=k.device)  # (d/2,)
    angles = k / base ** (two_i / dim)  # (..., d/2)
    return torch.stack((angles.sin(), angles.cos()), dim=-1).flatten(-2)  # interleaved sin, cos: (..., d)


def rotary_position_encoding(position_ids: torch.Tensor, head_dim: int, base: float) -> tuple[torch.Tensor, ...]:
    """RoPE angles θ_{k,i} = k / n^(2i/d_k), as (cos, sin) of shape (B, T, d_k) in the rotate-half layout."""
    inv_freq = 1.0 / base ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=position_ids.device) / head_dim)
    angles = position_ids[..., None].to(torch.float32) * inv_freq  # (B, T, d_k/2)
    angles = torch.cat((angles, angles), dim=-1)  # (B, T, d_k)
    return angles.cos(), angles.sin()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary_pos_emb(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
    """Rotate each (q, k) pair of dimensions by its position's angle, so q·k depends only on the distance."""
    cos, sin = cos.unsqueeze(1).to(q.dtype), sin.unsqueeze(1).to(q.dtype)  # (B, 1, T, d_k): broadcast over heads
    return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin


def positions_from_attention_mask(attention_mask: torch.Tensor | None, past_length: int, length: int,
                                  device: torch.device) -> torch.Tensor:
    """Position k of each token = number of real tokens before it, so left padding never shifts positions."""
    if attention_mask is None or attention_mask.dim() != 2:
        return torch.arange(past_length, past_length + length, device=device).unsqueeze(0)  # (1, T)
    positions = attention_mask.long().cumsum(-1) - 1
    return positions.clamp(min=0)[:, -length:]  # (B, T)


def scaled_dot_product_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs: Unpack[TransformersKwargs],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention(Q, K, V) = softmax(Q Kᵀ / √d_k + M) V; the causal mask M is -inf where the key is in the future."""
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling  # (B, h, T, S)
    if attention_mask is not None:
        scores = scores + attention_mask  # additive mask: 0 where allowed, a huge negative number where masked
    weights = nn.functional.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)  # rows sum to 1
    weights = nn.functional.dropout(weights, p=dropout, training=module.training)
    output = torch.matmul(weights, value)  # (B, h, T, d_k)
    return output.transpose(1, 2).contiguous(), weights  # (B, T, h, d_k)


class MultiHeadAttention(nn.Module):
    """MultiHead(X) = Concat(head_1, ..., head_h) W^O with head_i = Attention(X W^Q_i, X W^K_i, X W^V_i)."""

    def __init__(self, config: HfGptConfig, layer_idx: int, is_causal: bool = True):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.head_dim = config.head_dim
        self.scaling = self.head_dim**-0.5  # 1/√d_k
        self.attention_dropout = config.attention_dropout
        # True: masked self-attention, a token sees itself and the past only (GPT, the decoder).
        # False: bidirectional, every token sees every token (BERT, the encoder). SDPA reads this when no mask is given.
        self.is_causal = is_causal
        d, bias = config.hidden_size, config.attention_bias
        self.q_proj = nn.Linear(d, d, bias=bias)  # W^Q for all heads at once
        self.k_proj = nn.Linear(d, d, bias=bias)  # W^K
        self.v_proj = nn.Linear(d, d, bias=bias)  # W^V
        self.o_proj = nn.Linear(d, d, bias=bias)  # W^O
        self.o_proj.is_residual_projection = True

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        cache: Cache | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        query = self.split_heads(self.q_proj(hidden_states))  # (B, h, T, d_k)
        key = self.split_heads(self.k_proj(hidden_states))
        value = self.split_heads(self.v_proj(hidden_states))

        if position_embeddings is not None:  # RoPE
            query, key = apply_rotary_pos_emb(query, key, *position_embeddings)
        if cache is not None:  # KV cache: append this step's keys/values, attend over all of them
            key, value = cache.update(key, value, self.layer_idx)  # (B, h, S, d_k)
        return self.attend(query, key, value, attention_mask, **kwargs)

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, d) → (B, h, T, d_k): each head gets its own d_k = d / h slice."""
        return x.view(*x.shape[:-1], -1, self.head_dim).transpose(1, 2)

    def attend(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attention_mask: torch.Tensor | None,
               **kwargs: Unpack[TransformersKwargs]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Attention of every head, then Concat(heads) W^O: (B, h, T, d_k) → (B, T, d)."""
        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, scaled_dot_product_attention
        )
        output, weights = attention_interface(
            self,
            query,
            key,
            value,
            attention_mask,
            dropout=self.attention_dropout if self.training else 0.0,
            scaling=self.scaling,
            **kwargs,
        )
        output = output.reshape(query.shape[0], query.shape[2], -1).contiguous()  # concat heads: (B, T, d)
        return self.o_proj(output), weights


class CrossAttention(MultiHeadAttention):
    """Encoder-decoder attention: Q = decoder states W^Q (h, T, d_k); K, V = encoder output W^K, W^V (h, L, d_k)."""

    def __init__(self, config: HfGptConfig, layer_idx: int):
        super().__init__(config, layer_idx, is_causal=False)  # every target token may read every source token

    def forward(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        cache: EncoderDecoderCache | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        query = self.split_heads(self.q_proj(hidden_states))  # (B, h, T, d_k)
        if cache is not None and cache.is_updated.get(self.layer_idx):  # the source's K, V: once per generation
            layer = cache.cross_attention_cache.layers[self.layer_idx]
            key, value = layer.keys, layer.values
        else:
            key = self.split_heads(self.k_proj(encoder_hidden_states))  # (B, h, L, d_k)
            value = self.split_heads(self.v_proj(encoder_hidden_states))
            if cache is not None:
                key, value = cache.cross_attention_cache.update(key, value, self.layer_idx)
                cache.is_updated[self.layer_idx] = True
        kwargs["is_causal"] = False  # the model's is_causal (True in the decoder) is about self-attention only
        return self.attend(query, key, value, attention_mask, **kwargs)  # scores (B, h, T, L)


class FeedForward(nn.Module):
    """FFN(x) = act(x W_1 + b_1) W_2 + b_2, the same two-layer network applied to every position independently."""

    def __init__(self, config: HfGptConfig):
        super().__init__()
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=config.mlp_bias)  # W_1
        self.act_fn = ACT2FN[config.hidden_act]
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=config.mlp_bias)  # W_2
        self.down_proj.is_residual_projection = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.up_proj(x)))  # (B, T, d) → (B, T, d_ff) → (B, T, d)


class DecoderBlock(GradientCheckpointingLayer):
    """x + MHA(LN(x)), [x + CrossAttention(LN(x), enc)], x + FFN(LN(x)) (pre-norm); LN(x + sublayer(x)) (post-norm)."""

    def __init__(self, config: HfGptConfig, layer_idx: int, is_causal: bool = True, cross_attention: bool = False):
        super().__init__()
        self.pre_norm = config.norm_position == "pre"
        self.attention = MultiHeadAttention(config, layer_idx, is_causal=is_causal)
        self.attention_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        # Only in the encoder-decoder's decoder: the second sublayer reads the encoder's output.
        self.cross_attention = CrossAttention(config, layer_idx) if cross_attention else None
        self.cross_attention_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps) \
            if cross_attention else None
        self.feed_forward = FeedForward(config)
        self.ffn_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout)

    def sublayer(self, x: torch.Tensor, norm: nn.LayerNorm, fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """Residual + LayerNorm around one sublayer: x + f(LN(x)) (pre-norm) or LN(x + f(x)) (post-norm, Add & Norm)."""
        if self.pre_norm:
            return x + self.dropout(fn(norm(x)))
        return norm(x + self.dropout(fn(x)))

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        encoder_hidden_states: torch.Tensor | None = None,  # positional, so checkpointing carries its gradient
        encoder_attention_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> torch.Tensor:
        self_cache = cache.self_attention_cache if isinstance(cache, EncoderDecoderCache) else cache
        x = self.sublayer(  # (B, T, d)
            hidden_states, self.attention_norm,
            lambda h: self.attention(h, attention_mask, position_embeddings, self_cache, **kwargs)[0],
        )
        if self.cross_attention is not None:
            x = self.sublayer(
                x, self.cross_attention_norm,
                lambda h: self.cross_attention(h, encoder_hidden_states, encoder_attention_mask, cache, **kwargs)[0],
            )
        return self.sublayer(x, self.ffn_norm, self.feed_forward)


class EncoderBlock(DecoderBlock):
    """The same block with bidirectional self-attention (no causal mask): BERT's layer and the encoder's."""

    def __init__(self, config: HfGptConfig, layer_idx: int):
        super().__init__(config, layer_idx, is_causal=False)


class HfGptPreTrainedModel(PreTrainedModel):
    config: HfGptConfig
    config_class = HfGptConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["DecoderBlock", "EncoderBlock"]
    _supports_sdpa = True  # without it transformers silently falls back to eager
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _can_compile_fullgraph = True
    _can_record_outputs = {
        "hidden_states": DecoderBlock,  # EncoderBlock too: a subclass
        "attentions": OutputRecorder(MultiHeadAttention, index=1, layer_name="attention"),  # self-attention only
        "cross_attentions": OutputRecorder(CrossAttention, index=1),
    }

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)  # N(0, 0.02) linears and embeddings, LayerNorm = identity
        # GPT-2: the projections that write into the residual stream (two per block) get std / √(2·n_layer).
        # Marked on the Linear itself: transformers skips calling this on modules that own no parameters.
        if getattr(module, "is_residual_projection", False):
            std = self.config.initializer_range / math.sqrt(2 * self.config.num_hidden_layers)
            init.normal_(module.weight, mean=0.0, std=std)
        if getattr(module, "is_scaled_embedding", False):  # N(0, 1/d), times √d in forward: unit-size vectors
            init.normal_(module.weight, mean=0.0, std=self.config.hidden_size**-0.5)


class HfGptModel(HfGptPreTrainedModel):
    """Token embedding (+ position encoding) → N blocks → final LayerNorm; returns hidden states (B, T, d).

    The blocks are GPT's (masked self-attention) unless ``config.is_causal`` is False (BERT: bidirectional). Inside the
    encoder-decoder the same class is both stacks: the encoder (a config with ``is_causal=False``) and the decoder
    (``cross_attention=True``: every block also attends to the encoder's output).
    """

    def __init__(self, config: HfGptConfig, cross_attention: bool = False):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.embed_tokens.is_scaled_embedding = config.scale_embeddings
        self.embedding_scale = math.sqrt(config.hidden_size) if config.scale_embeddings else 1.0
        self.embed_positions = (
            nn.Embedding(config.max_position_embeddings, config.hidden_size)
            if config.position_embedding_type == "learned" else None
        )
        self.dropout = nn.Dropout(config.embedding_dropout)
        self.layers = nn.ModuleList(
            DecoderBlock(config, i, cross_attention=cross_attention) if config.is_causal else EncoderBlock(config, i)
            for i in range(config.num_hidden_layers)
        )
        # Pre-norm stacks need a last LayerNorm; post-norm blocks already end with one.
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps) if config.norm_position == "pre" \
            else nn.Identity()
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embed_tokens = value

    def embed_positions_of(self, position_ids: torch.Tensor, dtype: torch.dtype):
        """Return (additive position encoding, rotary cos/sin) for the configured position type."""
        kind = self.config.position_embedding_type
        if kind == "sinusoidal":
            pe = sinusoidal_position_encoding(position_ids, self.config.hidden_size, self.config.sinusoidal_base)
            return pe.to(dtype), None
        if kind == "learned":
            return self.embed_positions(position_ids), None
        return None, rotary_position_encoding(position_ids, self.config.head_dim, self.config.sinusoidal_base)

    @merge_with_config_defaults
    @capture_outputs
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> BaseModelOutputWithPastAndCrossAttentions:
        r"""encoder_hidden_states (B, L, d), encoder_attention_mask (B, L): the source, for the cross-attention."""
        if (input_ids is None) ^ (inputs_embeds is not None):
            raise ValueError("Pass exactly one of input_ids or inputs_embeds.")
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)  # token embedding: (B, T) → (B, T, d)
        # transformers' convention: the is_causal kwarg (filled from the config) can make a decoder bidirectional.
        is_causal = kwargs.get("is_causal", self.config.is_causal)
        if not is_causal:  # an encoder reads its whole input at once: nothing to cache
            cache = None
        elif use_cache and cache is None:
            has_cross = self.layers[0].cross_attention is not None
            cache = EncoderDecoderCache(DynamicCache(config=self.config), DynamicCache(config=self.config)) \
                if has_cross else DynamicCache(config=self.config)

        past_length = cache.get_seq_length() if cache is not None else 0
        length = inputs_embeds.shape[1]
        if position_ids is None:
            # Checked only when positions come from the length: packed rows (TRL's padding-free batches) restart
            # their position_ids, so they can be longer than the context.
            too_long = past_length + length > self.config.max_position_embeddings
            if too_long and self.config.position_embedding_type != "rope":
                raise ValueError(
                    f"Sequence of {past_length + length} tokens is longer than max_position_embeddings="
                    f"{self.config.max_position_embeddings}: truncate the input or train a model with a longer context."
                )
            position_ids = positions_from_attention_mask(attention_mask, past_length, length, inputs_embeds.device)

        if is_causal:  # masked self-attention
            self_cache = cache.self_attention_cache if isinstance(cache, EncoderDecoderCache) else cache
            mask = create_causal_mask(
                config=self.config,
                inputs_embeds=inputs_embeds,
                attention_mask=attention_mask,
                cache=self_cache,
                position_ids=position_ids,
            )
        else:  # bidirectional: only padding is masked
            mask = create_bidirectional_mask(config=self.config, inputs_embeds=inputs_embeds,
                                             attention_mask=attention_mask)
        if encoder_hidden_states is not None:  # cross-attention: only the source's padding is masked
            encoder_attention_mask = create_bidirectional_mask(
                config=self.config,
                inputs_embeds=inputs_embeds,
                attention_mask=encoder_attention_mask,
                encoder_hidden_states=encoder_hidden_states,
            )
        additive_pe, rotary = self.embed_positions_of(position_ids, inputs_embeds.dtype)
        hidden_states = inputs_embeds
        if self.embedding_scale != 1.0:  # as Gemma: also for inputs_embeds given directly
            hidden_states = hidden_states * self.embedding_scale
        if additive_pe is not None:
            hidden_states = hidden_states + additive_pe
        hidden_states = self.dropout(hidden_states)
        for block in self.layers:
            hidden_states = block(
                hidden_states,
                mask,
                rotary,
                encoder_hidden_states,
                encoder_attention_mask,
                cache=cache,
                position_ids=position_ids,
                **kwargs,
            )
        return BaseModelOutputWithPastAndCrossAttentions(last_hidden_state=self.norm(hidden_states), cache=cache)


class HfGptForCausalLM(HfGptPreTrainedModel, GenerationMixin):
    """Language-model head: logits (B, T, vocab) = h W_Eᵀ, trained with next-token cross-entropy."""

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: HfGptConfig):
        super().__init__(config)
        self.model = HfGptModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs: Unpack[TransformersKwargs],
    ) -> CausalLMOutputWithPast:
        r"""labels (B, T): the input ids; the loss shifts them so position t predicts token t+1 (-100 = ignore)."""
        outputs: BaseModelOutputWithPastAndCrossAttentions = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )
        hidden_states = slice_logits_to_keep(outputs.last_hidden_state, logits_to_keep)
        logits = self.lm_head(hidden_states)  # (B, T, vocab)
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
        return CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )


class HfGptForSequenceClassification(HfGptPreTrainedModel):
    """A score head read at the last real token (the reply's eos): the reward model and the PPO value model.

    On a bidirectional encoder (``is_causal=False``) it reads the first token instead, as BERT's [CLS]: there the first
    token has seen the whole text, while in a causal model only the last one has.
    """

    def __init__(self, config: HfGptConfig):
        if config.is_encoder_decoder:
            raise ValueError("HfGptForSequenceClassification needs an encoder or a decoder, not an encoder-decoder: "
                             "build it from HfGptConfig(is_causal=False) for a BERT-style classifier.")
        super().__init__(config)
        self.num_labels = config.num_labels
        self.model = HfGptModel(config)
        self.score = nn.Linear(config.hidden_size, config.num_labels, bias=False)
        self.post_init()

    def last_token_index(self, input_ids: torch.Tensor | None, attention_mask: torch.Tensor | None,
                         length: int, device: torch.device) -> torch.Tensor | int:
        """Index of the rightmost real token of each row (works with left or right padding)."""
        if attention_mask is not None and attention_mask.dim() == 2:
            real = attention_mask[:, -length:].to(device=device, dtype=torch.int32)
        elif input_ids is not None and self.config.pad_token_id is not None:
            real = (input_ids != self.config.pad_token_id).to(device=device, dtype=torch.int32)
        else:
            return -1
        return (torch.arange(length, device=device, dtype=torch.int32) * real).argmax(-1)

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> SequenceClassifierOutputWithPast:
        outputs: BaseModelOutputWithPastAndCrossAttentions = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )
        logits = self.score(outputs.last_hidden_state)  # (B, T, num_labels)
        batch, length = logits.shape[:2]
        if self.config.is_causal:
            last = self.last_token_index(input_ids, attention_mask, length, logits.device)
            pooled_logits = logits[torch.arange(batch, device=logits.device), last]  # (B, num_labels)
        else:  # right padding (the tokenizer's default for encoders) keeps real text at position 0
            pooled_logits = logits[:, 0]
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, pooled_logits=pooled_logits, config=self.config)
        return SequenceClassifierOutputWithPast(
            loss=loss,
            logits=pooled_logits,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )


class HfGptForMaskedLM(HfGptPreTrainedModel):
    """BERT's masked LM: bidirectional blocks, logits (B, L, vocab) = h W_Eᵀ, cross-entropy on masked tokens only."""

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: HfGptConfig):
        if config.is_causal or config.is_encoder_decoder:
            raise ValueError("HfGptForMaskedLM is a bidirectional encoder: build it from HfGptConfig(is_causal=False, "
                             "...). A causal model cannot see the words to the right of [MASK].")
        super().__init__(config)
        self.model = HfGptModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> MaskedLMOutput:
        r"""labels (B, L): original ids at masked positions, -100 elsewhere (no shift: a position predicts itself)."""
        outputs = self.model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, inputs_embeds=inputs_embeds,
            **kwargs,
        )
        logits = self.lm_head(outputs.last_hidden_state)  # (B, L, vocab)
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
        return MaskedLMOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states,
                              attentions=outputs.attentions)


def shift_tokens_right(labels: torch.Tensor, pad_token_id: int, decoder_start_token_id: int) -> torch.Tensor:
    """Teacher forcing: the decoder reads [start, y_1, ..., y_{T-1}] and predicts [y_1, ..., y_T]."""
    shifted = labels.new_full(labels.shape, pad_token_id)
    shifted[:, 1:] = labels[:, :-1]
    shifted[:, 0] = decoder_start_token_id
    return shifted.masked_fill(shifted == -100, pad_token_id)


class HfGptSeq2SeqModel(HfGptPreTrainedModel):
    """The original Transformer: an encoder of bidirectional blocks reads the source (B, L); a decoder of masked
    self-attention + cross-attention blocks writes the target (B, T). Both share one token embedding (one BPE)."""

    _tied_weights_keys = {"decoder.embed_tokens.weight": "encoder.embed_tokens.weight"}

    def __init__(self, config: HfGptConfig):
        super().__init__(config)
        # As T5: the encoder is built from a copy of the config that says "bidirectional, num_encoder_layers deep".
        encoder_config = copy.deepcopy(config)
        encoder_config.is_causal, encoder_config.use_cache, encoder_config.is_encoder_decoder = False, False, False
        encoder_config.num_hidden_layers, encoder_config.num_encoder_layers = config.num_encoder_layers, None
        self.encoder = HfGptModel(encoder_config)
        self.decoder = HfGptModel(config, cross_attention=True)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.encoder.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.encoder.embed_tokens = self.decoder.embed_tokens = value

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.LongTensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        encoder_outputs: BaseModelOutput | tuple | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        decoder_inputs_embeds: torch.Tensor | None = None,
        decoder_position_ids: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> Seq2SeqModelOutput:
        if encoder_outputs is None:  # generate() runs the encoder once and passes its output at every step
            encoder_outputs = self.encoder(
                input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds, **kwargs
            )
        elif not isinstance(encoder_outputs, ModelOutput):  # a tuple (last_hidden_state, ...)
            encoder_outputs = BaseModelOutput(*encoder_outputs)
        decoder_outputs = self.decoder(
            input_ids=decoder_input_ids,
            attention_mask=decoder_attention_mask,
            position_ids=decoder_position_ids,
            cache=cache,
            inputs_embeds=decoder_inputs_embeds,
            use_cache=use_cache,
            encoder_hidden_states=encoder_outputs.last_hidden_state,
            encoder_attention_mask=attention_mask,
            **kwargs,
        )
        return Seq2SeqModelOutput(
            last_hidden_state=decoder_outputs.last_hidden_state,
            cache=decoder_outputs.cache,
            decoder_hidden_states=decoder_outputs.hidden_states,
            decoder_attentions=decoder_outputs.attentions,
            cross_attentions=decoder_outputs.cross_attentions,
            encoder_last_hidden_state=encoder_outputs.last_hidden_state,
            encoder_hidden_states=encoder_outputs.hidden_states,
            encoder_attentions=encoder_outputs.attentions,
        )


class HfGptForConditionalGeneration(HfGptPreTrainedModel, GenerationMixin):
    """Encoder-decoder with an LM head on the decoder: logits (B, T, vocab), next-token cross-entropy on the target."""

    _tied_weights_keys = {"lm_head.weight": "model.encoder.embed_tokens.weight"}

    def __init__(self, config: HfGptConfig):
        if not config.is_encoder_decoder:
            raise ValueError("HfGptForConditionalGeneration is an encoder-decoder: build it from "
                             "HfGptConfig(is_encoder_decoder=True, decoder_start_token_id=<bos id>, ...).")
        super().__init__(config)
        self.model = HfGptSeq2SeqModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def prepare_decoder_input_ids_from_labels(self, labels: torch.Tensor) -> torch.Tensor:
        """Used by DataCollatorForSeq2Seq, so batches arrive with decoder_input_ids."""
        return shift_tokens_right(labels, self.config.pad_token_id, self.config.decoder_start_token_id)

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.LongTensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        encoder_outputs: BaseModelOutput | tuple | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        decoder_inputs_embeds: torch.Tensor | None = None,
        decoder_position_ids: torch.LongTensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs: Unpack[TransformersKwargs],
    ) -> Seq2SeqLMOutput:
        r"""labels (B, T): target ids (-100 = ignore); without decoder_input_ids the decoder reads them shifted."""
        if labels is not None and decoder_input_ids is None and decoder_inputs_embeds is None:
            decoder_input_ids = self.prepare_decoder_input_ids_from_labels(labels)
        outputs: Seq2SeqModelOutput = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            decoder_input_ids=decoder_input_ids,
            decoder_attention_mask=decoder_attention_mask,
            encoder_outputs=encoder_outputs,
            cache=cache,
            inputs_embeds=inputs_embeds,
            decoder_inputs_embeds=decoder_inputs_embeds,
            decoder_position_ids=decoder_position_ids,
            use_cache=use_cache,
            **kwargs,
        )
        logits = self.lm_head(slice_logits_to_keep(outputs.last_hidden_state, logits_to_keep))  # (B, T, vocab)
        loss = None
        if labels is not None:  # labels are already aligned with the decoder's outputs: passed as shift_labels
            loss = self.loss_function(logits=logits, labels=None, shift_labels=labels,
                                      vocab_size=self.config.vocab_size, **kwargs)
        return Seq2SeqLMOutput(
            loss=loss,
            logits=logits,
            cache=outputs.cache,
            decoder_hidden_states=outputs.decoder_hidden_states,
            decoder_attentions=outputs.decoder_attentions,
            cross_attentions=outputs.cross_attentions,
            encoder_last_hidden_state=outputs.encoder_last_hidden_state,
            encoder_hidden_states=outputs.encoder_hidden_states,
            encoder_attentions=outputs.encoder_attentions,
        )


__all__ = [
    "HfGptPreTrainedModel",
    "HfGptModel",
    "HfGptForCausalLM",
    "HfGptForSequenceClassification",
    "HfGptForMaskedLM",
    "HfGptSeq2SeqModel",
    "HfGptForConditionalGeneration",
    "CrossAttention",
    "EncoderBlock",
    "sinusoidal_position_encoding",
    "scaled_dot_product_attention",
    "MultiHeadAttention",
    "FeedForward",
    "DecoderBlock",
]
