#!/usr/bin/env bash
# The one prepared run for a lent GPU (~10 minutes): what README's GPU figures come from. Needs a Python with a CUDA
# build of torch and `pip install -e ".[dev]"`; writes everything under ${OUT:-runs/gpu-check}.
#   bash bench/gpu_check.sh
set -uo pipefail
OUT=${OUT:-runs/gpu-check}
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpu.txt"
# 1. The bench: 124M, context 1024, bf16, compiled; hf-gpt vs GPT2LMHeadModel vs the plain loop; batch-64 decoding.
timeout 300 python bench/gpu_bench.py --steps 25 --warmup 8 --out "$OUT/bench" 2>&1 | tee "$OUT/gpu_bench.txt"
# 2. GPU tests (flash kernel, fp16/bf16 pretraining, the bench's table).
timeout 120 python -m pytest -q tests/test_gpu.py 2>&1 | tail -5 | tee "$OUT/gpu_tests.txt"
# 3. gpt2-small shape for ~3 minutes on local text (no Hub here), MFU in its log.
DATA=${DATA:-../shared/data/tinyshakespeare/input.txt}
timeout 240 python recipes/pretrain.py --config gpt2-small --dataset_name "" --streaming false \
  --data_files "$DATA" --vocab_size 8192 --max_steps 60 --gradient_accumulation_steps 4 --eval_steps 30 \
  --save_steps 1000 --logging_steps 10 --stream_validation_documents 0 --tokenizer_documents 0 \
  --output_dir "$OUT/gpt2-small" 2>&1 | grep -E "tokens_per_second|eval_loss|error" | tee "$OUT/gpt2_small.txt"
# 4. PPO for a few steps in bf16 (the tests' tiny models; rollouts under autocast).
timeout 120 python -m pytest -q tests/test_ppo.py -k bf16 2>&1 | tail -3 | tee "$OUT/ppo_bf16.txt"
