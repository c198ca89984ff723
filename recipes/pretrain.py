"""Pretrain an hf_gpt model (stage 1). Same command under `python` and `accelerate launch`:

    python recipes/pretrain.py --config shakespeare
    accelerate launch --config_file recipes/accelerate/multi_gpu.yaml recipes/pretrain.py --config gpt2-small

Any field of `hf_gpt.pretrain.PretrainConfig` (TrainingArguments included) can be set in the YAML or as a flag.
A run restarted with the same output_dir resumes from its last checkpoint.
"""

from hf_gpt.pretrain import PretrainConfig, pretrain
from hf_gpt.recipe_utils import parse_recipe_args, push_if_requested, run_cli, take_push_request


def main() -> None:
    (args,) = parse_recipe_args((PretrainConfig,), stage="pretrain")
    push = take_push_request(args)
    pretrain(args, resume_from_checkpoint=args.resume_from_checkpoint or True)
    push_if_requested(push, args.output_dir)


if __name__ == "__main__":
    run_cli(main)
