"""Runs a tiny pretraining in its own process, for the resume (SIGKILL) and multi-process tests.

    python tests/pretrain_driver.py OUTPUT_DIR DATA_FILE TOKENIZER BATCH [KILL_AFTER_SAVE_AT_STEP]
"""

import os
import signal
import sys

from transformers import TrainerCallback

from hf_gpt.pretrain import PretrainConfig, pretrain


class KillAfterSave(TrainerCallback):
    """A crash at the worst moment: right after a checkpoint is written, with training still to do."""

    def __init__(self, step: int):
        self.step = step

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


if __name__ == "__main__":
    output_dir, data_file, tokenizer, batch = sys.argv[1:5]
    kill_step = int(sys.argv[5]) if len(sys.argv) > 5 else None
    args = PretrainConfig(
        output_dir=output_dir, data_files=[data_file], tokenizer_name_or_path=tokenizer, block_size=32,
        n_layer=2, n_head=2, n_embd=32, per_device_train_batch_size=int(batch), per_device_eval_batch_size=16,
        max_steps=12, save_steps=4, eval_steps=4, logging_steps=1, learning_rate=3e-3, warmup_steps=2,
        report_to="none", disable_tqdm=True, sample_prompts=["The"], sample_max_new_tokens=4, seed=7,
        dataloader_num_workers=0,
    )
    pretrain(args, resume_from_checkpoint=True, callbacks=[KillAfterSave(kill_step)] if kill_step else None)
