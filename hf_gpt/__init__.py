"""hf_gpt: train your own GPT end to end (BPE → pretraining → SFT → reward model → PPO) as a Hugging Face model.

Importing the package registers the model with transformers' Auto classes.
"""

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoModelForSeq2SeqLM,
    AutoModelForSequenceClassification,
)

from .configuration_hf_gpt import HfGptConfig
from .modeling_hf_gpt import (
    CrossAttention,
    DecoderBlock,
    EncoderBlock,
    FeedForward,
    HfGptForCausalLM,
    HfGptForConditionalGeneration,
    HfGptForMaskedLM,
    HfGptForSequenceClassification,
    HfGptModel,
    HfGptPreTrainedModel,
    HfGptSeq2SeqModel,
    MultiHeadAttention,
    scaled_dot_product_attention,
    sinusoidal_position_encoding,
)

__version__ = "0.1.0"

AutoConfig.register(HfGptConfig.model_type, HfGptConfig, exist_ok=True)
for _auto, _cls in (
    (AutoModel, HfGptModel),
    (AutoModelForCausalLM, HfGptForCausalLM),
    (AutoModelForSequenceClassification, HfGptForSequenceClassification),
    (AutoModelForMaskedLM, HfGptForMaskedLM),
    (AutoModelForSeq2SeqLM, HfGptForConditionalGeneration),
):
    _auto.register(HfGptConfig, _cls, exist_ok=True)
    # Makes save_pretrained copy the code files next to the weights, for trust_remote_code loading.
    _cls.register_for_auto_class(_auto.__name__)
HfGptConfig.register_for_auto_class()

__all__ = [
    "HfGptConfig",
    "HfGptModel",
    "HfGptPreTrainedModel",
    "HfGptForCausalLM",
    "HfGptForSequenceClassification",
    "HfGptForMaskedLM",
    "HfGptSeq2SeqModel",
    "HfGptForConditionalGeneration",
    "DecoderBlock",
    "EncoderBlock",
    "CrossAttention",
    "FeedForward",
    "MultiHeadAttention",
    "scaled_dot_product_attention",
    "sinusoidal_position_encoding",
]

# PEFT picks LoRA's target modules by model type: registered, `LoraConfig(task_type="CAUSAL_LM")` alone works on
# hf_gpt models, on the attention's W^Q and W^V as for Llama (where hf_gpt is not installed, name them).
try:
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as _LORA_TARGETS
except ImportError:
    pass
else:
    _LORA_TARGETS.setdefault(HfGptConfig.model_type, ["q_proj", "v_proj"])
