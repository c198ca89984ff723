"""Configuration of hf_gpt, a decoder-only Transformer (GPT) taught from first principles.

Field names follow transformers' standard names (``hidden_size``, ``num_hidden_layers``...); GPT-2's names
(``n_embd``, ``n_layer``, ``n_head``, ``n_positions``) work too, as aliases.
"""

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig
from transformers.activations import ACT2FN

POSITION_EMBEDDING_TYPES = ("sinusoidal", "learned", "rope")
NORM_POSITIONS = ("pre", "post")
# Saved into every config.json so each Auto class finds our code in the folder (Hub remote code).
AUTO_MAP = {
    "AutoConfig": "configuration_hf_gpt.HfGptConfig",
    "AutoModel": "modeling_hf_gpt.HfGptModel",
    "AutoModelForCausalLM": "modeling_hf_gpt.HfGptForCausalLM",
    "AutoModelForSequenceClassification": "modeling_hf_gpt.HfGptForSequenceClassification",
    "AutoModelForMaskedLM": "modeling_hf_gpt.HfGptForMaskedLM",
    "AutoModelForSeq2SeqLM": "modeling_hf_gpt.HfGptForConditionalGeneration",
}


@strict(accept_kwargs=True)
class HfGptConfig(PreTrainedConfig):
    r"""
    vocab_size: size of the BPE vocabulary (rows of the token embedding).
    hidden_size: d_model, the width of every token's vector.
    num_hidden_layers: number of stacked decoder blocks.
    num_attention_heads: h; each head works in d_k = hidden_size / h dimensions.
    intermediate_size: width of the position-wise feed-forward network (default 4 * hidden_size).
    max_position_embeddings: longest sequence (context) the model accepts.
    position_embedding_type: "sinusoidal" (P(k,2i)=sin(k/n^(2i/d)), P(k,2i+1)=cos(k/n^(2i/d)), added to the token
        embedding), "learned" (GPT-2's table) or "rope" (rotary, applied to queries and keys).
    sinusoidal_base: n in the sinusoidal formula (10000 in "Attention Is All You Need"); also RoPE's base.
    scale_embeddings: multiply token embeddings by √d_model and initialise them N(0, 1/d_model), as the original
        Transformer does, so tokens and the unit-size sinusoids are of the same size (None: only for sinusoidal).
    norm_position: "pre" (LayerNorm before each sublayer, GPT-2) or "post" (Add & Norm after it, original Transformer).
    hidden_act: activation of the feed-forward network, any key of transformers' ACT2FN ("gelu", "relu"...).
    embedding_dropout / attention_dropout / hidden_dropout: dropout on embeddings, attention weights, sublayer outputs.
    attention_bias / mlp_bias: whether the W^Q, W^K, W^V, W^O and FFN linear layers have biases.
    is_causal: True for GPT (masked self-attention: a token sees only the past); False for a BERT-style encoder
        (bidirectional self-attention, for HfGptForMaskedLM and encoder classification).
    is_encoder_decoder: the original Transformer (HfGptForConditionalGeneration): a bidirectional encoder of
        num_encoder_layers blocks, a decoder of num_hidden_layers blocks with cross-attention; the decoder starts
        from decoder_start_token_id.

    Example:
        >>> from hf_gpt import HfGptConfig, HfGptForCausalLM
        >>> model = HfGptForCausalLM(HfGptConfig(vocab_size=512, n_embd=64, n_layer=2, n_head=4))
    """

    model_type = "hf_gpt"
    keys_to_ignore_at_inference = ["cache"]
    attribute_map = {
        "n_embd": "hidden_size",
        "n_layer": "num_hidden_layers",
        "n_head": "num_attention_heads",
        "n_positions": "max_position_embeddings",
        "n_inner": "intermediate_size",
    }

    vocab_size: int = 8192
    hidden_size: int = 256
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    intermediate_size: int | None = None
    max_position_embeddings: int = 512
    position_embedding_type: str = "sinusoidal"
    sinusoidal_base: float = 10000.0
    scale_embeddings: bool | None = None
    norm_position: str = "pre"
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-5
    embedding_dropout: float = 0.0
    attention_dropout: float = 0.0
    hidden_dropout: float = 0.0
    attention_bias: bool = True
    mlp_bias: bool = True
    is_causal: bool = True
    num_encoder_layers: int | None = None
    decoder_start_token_id: int | None = None
    initializer_range: float = 0.02
    # transformers 5's config base does not declare these: without them the LM head is silently left untied.
    tie_word_embeddings: bool = True
    use_cache: bool = True
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None

    def __post_init__(self, **kwargs):
        for alias, name in self.attribute_map.items():  # GPT-2 names arrive as extra kwargs: apply them first
            if alias in kwargs:
                setattr(self, name, kwargs.pop(alias))
        if self.intermediate_size is None:
            self.intermediate_size = 4 * self.hidden_size
        if self.is_encoder_decoder and self.num_encoder_layers is None:
            self.num_encoder_layers = self.num_hidden_layers
        if self.scale_embeddings is None:
            # Without it the sinusoids (size 1) drown N(0, 0.02) token vectors and the model learns only unigrams.
            self.scale_embeddings = self.position_embedding_type == "sinusoidal"
        # transformers writes only the saved class into auto_map; start from the full map so all four load.
        self.auto_map = {**AUTO_MAP, **(kwargs.pop("auto_map", None) or {})}
        # Checked here too so the user gets a plain ValueError, not the strict-dataclass wrapper around it.
        self.validate_architecture()
        super().__post_init__(**kwargs)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def validate_architecture(self):
        """Reject impossible settings with a message that names the field, its value and what is allowed."""
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                     "intermediate_size", "max_position_embeddings"):
            value = getattr(self, name)
            if value <= 0:
                raise ValueError(f"HfGptConfig.{name} must be a positive integer, got {value}.")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"HfGptConfig.hidden_size ({self.hidden_size}) must be divisible by num_attention_heads "
                f"({self.num_attention_heads}): each head gets hidden_size / num_attention_heads dimensions."
            )
        if self.is_encoder_decoder and not self.is_causal:
            raise ValueError("HfGptConfig: in an encoder-decoder the encoder is bidirectional and the decoder causal "
                             "by construction; drop is_causal=False.")
        if self.num_encoder_layers is not None and not self.is_encoder_decoder:
            raise ValueError("HfGptConfig.num_encoder_layers is only for an encoder-decoder: set "
                             "is_encoder_decoder=True or drop it (num_hidden_layers sets the depth of a decoder or "
                             "of an encoder).")
        if self.is_encoder_decoder and self.num_encoder_layers <= 0:
            raise ValueError(
                f"HfGptConfig.num_encoder_layers must be a positive integer, got {self.num_encoder_layers}.")
        _check_choice("position_embedding_type", self.position_embedding_type, POSITION_EMBEDDING_TYPES)
        _check_choice("norm_position", self.norm_position, NORM_POSITIONS)
        _check_choice("hidden_act", self.hidden_act, tuple(ACT2FN))
        if self.position_embedding_type == "sinusoidal" and self.hidden_size % 2:
            raise ValueError(f"HfGptConfig.hidden_size must be even for sinusoidal positions, got {self.hidden_size}.")
        if self.position_embedding_type == "rope" and self.head_dim % 2:
            raise ValueError(f"HfGptConfig: RoPE needs an even head dimension, got {self.head_dim}.")
        if self.sinusoidal_base <= 1:
            raise ValueError(f"HfGptConfig.sinusoidal_base must be > 1, got {self.sinusoidal_base}.")
        for name in ("embedding_dropout", "attention_dropout", "hidden_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"HfGptConfig.{name} must be in [0, 1), got {getattr(self, name)}.")


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"HfGptConfig.{name}={value!r} is not valid; choose one of: {', '.join(choices)}.")


__all__ = ["HfGptConfig"]
