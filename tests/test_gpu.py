"""What only a GPU can show (skipped without one): flash/memory-efficient SDPA kernels, fp16 with loss scaling and
the GPU bench's table (PPO in bf16/fp16 on a GPU: tests/test_ppo.py). bench/gpu_check.sh runs them on a lent device;
tests/test_benches.py runs that script tiny on the CPU."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hf_gpt.data import write_jsonl
from hf_gpt.pretrain import PretrainConfig, pretrain

ROOT = Path(__file__).resolve().parents[1]
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none on this machine)")


@cuda
def test_attention_runs_on_the_flash_kernel(tiny_model):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    model = tiny_model(hidden_size=128, num_attention_heads=2).to("cuda", torch.bfloat16)  # head_dim 64
    ids = torch.randint(3, 300, (2, 64), device="cuda")
    with torch.no_grad(), sdpa_kernel([SDPBackend.FLASH_ATTENTION]):  # raises if the flash kernel cannot run
        flash = model(ids).logits
    with torch.no_grad(), sdpa_kernel([SDPBackend.MATH]):
        math_ = model(ids).logits
    torch.testing.assert_close(flash.float(), math_.float(), atol=0.05, rtol=0.05)


@cuda
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_pretraining_in_mixed_precision_on_the_gpu(precision, tmp_path, tokenizer):
    from pydoc_data.topics import topics

    tokenizer.save_pretrained(tmp_path / "tok")
    data = write_jsonl(tmp_path / "d.jsonl", [{"text": t} for t in list(topics.values())[:20]])
    args = PretrainConfig(output_dir=str(tmp_path / "run"), data_files=[str(data)], block_size=64,
                          tokenizer_name_or_path=str(tmp_path / "tok"), n_layer=2, n_head=2, n_embd=128,
                          per_device_train_batch_size=8, max_steps=4, logging_steps=1, eval_strategy="no",
                          save_strategy="no", report_to="none", disable_tqdm=True, **{precision: True})
    trainer = pretrain(args)
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert all(torch.isfinite(torch.tensor(h["loss"])) and h["mfu"] > 0 for h in logs)  # a GPU in the peak table


@cuda
def test_gpu_bench_prints_its_table():
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_bench.py"), "--tiny", "--steps", "8",
                             "--warmup", "3", "--decode-batch", "8", "--decode-tokens", "8"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "| A hf-gpt (Trainer) |" in result.stdout and "Decoding, batch 8" in result.stdout

