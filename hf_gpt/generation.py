"""Sampling from a trained model: temperature scales the logits (p ∝ exp(z/τ)), top-p keeps the smallest set of
tokens whose probabilities sum to p. Temperature 0 means greedy decoding."""

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, PreTrainedModel


def sampling_config(model: PreTrainedModel, max_new_tokens: int = 64, temperature: float = 1.0, top_p: float = 1.0,
                    top_k: int = 0, repetition_penalty: float = 1.0) -> GenerationConfig:
    """A GenerationConfig with only the filters asked for: top_p=1.0 and top_k=0 switch those off."""
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}.")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}.")
    greedy = temperature == 0
    return GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=not greedy,
        temperature=None if greedy else temperature,
        top_p=None if greedy else top_p,
        top_k=None if greedy else top_k,
        repetition_penalty=repetition_penalty,
        eos_token_id=model.config.eos_token_id,
        pad_token_id=model.config.pad_token_id,
        bos_token_id=model.config.bos_token_id,
    )


def generate_text(model_name_or_path: str, prompts: str | list[str], seed: int | None = None,
                  **sampling) -> list[str]:
    """Continue each prompt; returns the new text only."""
    tokenizer = AutoTokenizer.from_pretrained(model_name_or_path, trust_remote_code=True, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(model_name_or_path, trust_remote_code=True).eval()
    prompts = [prompts] if isinstance(prompts, str) else prompts
    inputs = tokenizer(prompts, return_tensors="pt", padding=True)
    if seed is not None:
        torch.manual_seed(seed)
    output = model.generate(**inputs, generation_config=sampling_config(model, **sampling))
    return tokenizer.batch_decode(output[:, inputs.input_ids.shape[1]:], skip_special_tokens=True)
