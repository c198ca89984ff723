"""Model card templates (Jinja), shipped in the wheel as the package data `hf_gpt.model_cards`."""
