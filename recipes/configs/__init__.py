"""Recipe presets (YAML), shipped in the wheel as the package data `hf_gpt.recipe_configs`."""
