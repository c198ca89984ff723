"""PPO in its own process(es), for the multi-process tests:

    python tests/ppo_driver.py TOKENIZER OUTPUT_DIR ROLLOUTS_PER_PROCESS [MAX_STEPS [KILL_AFTER_SAVE_AT_STEP]]

prints `RESULT {processes, steps, scores, kl}` from the main process (scores and KL per PPO step); with a kill step,
the main process kills itself (SIGKILL) right after saving that step's checkpoint."""

import json
import os
import signal
import sys

import torch
from datasets import Dataset
from transformers import AutoTokenizer

from hf_gpt import HfGptConfig, HfGptForCausalLM, HfGptForSequenceClassification
from hf_gpt.ppo import PPOConfig, PPOTrainer
from hf_gpt.tokenizer import special_token_ids


def letter_a(prompts, completions):
    return [c.count("a") / max(len(c), 1) for c in completions]


if __name__ == "__main__":
    tokenizer = AutoTokenizer.from_pretrained(sys.argv[1])
    config = dict(vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=4, max_position_embeddings=96,
                  **special_token_ids(tokenizer))
    torch.manual_seed(0)
    policy, ref = HfGptForCausalLM(HfGptConfig(**config)), HfGptForCausalLM(HfGptConfig(**config))
    ref.load_state_dict(policy.state_dict())
    value = HfGptForSequenceClassification(HfGptConfig(num_labels=1, **config))
    args = PPOConfig(output_dir=sys.argv[2], per_device_train_batch_size=int(sys.argv[3]), response_length=6,
                     max_steps=int(sys.argv[4]) if len(sys.argv) > 4 else 4, save_steps=2, num_ppo_epochs=2,
                     learning_rate=1e-3, report_to="none", logging_steps=100, disable_tqdm=True, seed=3)
    prompts = Dataset.from_list([{"prompt": f"Tell me about {i}."} for i in range(32)])
    trainer = PPOTrainer(args, policy, ref, value, tokenizer, prompts, reward_funcs=[letter_a])
    if len(sys.argv) > 5:
        save, kill_step = trainer._save_checkpoint, int(sys.argv[5])

        def save_then_die() -> None:
            save()
            if trainer.step == kill_step and trainer.accelerator.is_main_process:
                os.kill(os.getpid(), signal.SIGKILL)

        trainer._save_checkpoint = save_then_die
    history = trainer.train(resume_from_checkpoint=True)
    trainer.save_model()
    if trainer.accelerator.is_main_process:
        print("RESULT " + json.dumps({"processes": trainer.accelerator.num_processes, "steps": len(history),
                                      "scores": [h["objective/scores"] for h in history],
                                      "kl": [h["objective/kl"] for h in history]}))
