#!/usr/bin/env bash
# The one prepared run for a lent GPU: what README's GPU figures come from. Its steps' time limits add up to 9 minutes
# (not yet run on a GPU: how long each takes there is unmeasured). Steps in order of value, each writing its own file
# under $OUT (six small files) as it ends, so a run cut short keeps what it measured.
#   make gpu-carry                   # here: the wheels the device image lacks + tinyshakespeare, into .gpu-carry/
#   bash bench/gpu_check.sh          # there: with the device tool, carry [".gpu-carry"], timeout_s 590
# On any CUDA machine where hf-gpt is installed, `bash bench/gpu_check.sh` alone. GPU_CHECK_SMOKE=1 runs the same
# steps tiny on the CPU (tests/test_benches.py), so the lease is never the script's first run.
set -uo pipefail
OUT=${OUT:-runs/gpu-check}
WORK=${WORK:-$(mktemp -d)}  # model folders and logs: too big or too many to come back from the device
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false

# 0. The device image has torch, accelerate, tokenizers, peft and pytest but no trl or datasets, and an older
#    transformers: where a requirement is unmet, install the carried wheels into $WORK/site, then hf-gpt itself, built
#    with the carried setuptools (its license string needs setuptools >= 77); stop early if anything is still unmet.
check_env() { "$PY" bench/gpu_env.py > "$OUT/env.txt" 2>&1; }
if ! check_env && [ -d .gpu-carry/wheels ]; then
  pip_install() { "$PY" -m pip install -q --no-index --no-deps --no-cache-dir --target "$WORK/site" "$@"; }
  { pip_install --no-compile .gpu-carry/wheels/*.whl && export PYTHONPATH="$WORK/site${PYTHONPATH:+:$PYTHONPATH}" \
    && pip_install --no-build-isolation .; } || { echo "error: installing .gpu-carry/wheels or hf-gpt failed"; exit 1; }
  check_env
fi
grep -q "every requirement of hf-gpt is met" "$OUT/env.txt" || { cat "$OUT/env.txt"; exit 1; }
! command -v nvidia-smi >/dev/null || \
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv >> "$OUT/env.txt"
cat "$OUT/env.txt"

if [ "${GPU_CHECK_SMOKE:-0}" = 1 ]; then
  BENCH=(--device cpu --tiny --no-compile --steps 3 --warmup 1 --batch 2 --rounds 1 --decode-batch 2 --decode-tokens 4)
  SHAPE=(--n_layer 2 --n_head 2 --n_embd 64 --block_size 64 --vocab_size 512 --bf16 false --torch_compile false
         --optim adamw_torch --use_cpu true --per_device_train_batch_size 2 --gradient_accumulation_steps 1
         --max_steps 4 --eval_steps 2 --logging_steps 2)
else
  BENCH=(--steps 25 --warmup 8)
  SHAPE=(--vocab_size 8192 --max_steps 60 --gradient_accumulation_steps 4 --eval_steps 30 --logging_steps 10)
fi
status=()

# 1. The bench: 124M, context 1024, bf16, compiled; hf-gpt vs GPT2LMHeadModel vs the plain loop; batch-64 decoding.
timeout 240 "$PY" bench/gpu_bench.py "${BENCH[@]}" --out "$WORK/bench" 2>&1 | tee "$WORK/gpu_bench.log" \
  | grep -v -E "^\s*$|Warning|warn\(" > "$OUT/gpu_bench.txt"
status+=("bench ${PIPESTATUS[0]}")
tail -n 12 "$OUT/gpu_bench.txt"

# 2. GPU tests: flash SDPA kernel, bf16/fp16 pretraining, PPO in bf16 and fp16 on the GPU (and bf16 on the CPU).
GPU_TESTS=(test_attention_runs_on_the_flash_kernel test_pretraining_in_mixed_precision_on_the_gpu
           test_mixed_precision_runs_under_autocast)
if [ "${GPU_CHECK_SMOKE:-0}" = 1 ]; then  # the CPU suite runs them: only check that each name still exists
  for name in "${GPU_TESTS[@]}"; do
    grep -l "^def $name(" tests/test_gpu.py tests/test_ppo.py || echo "error: no test $name"
  done > "$OUT/gpu_tests.txt"
  ! grep -q "^error" "$OUT/gpu_tests.txt"
else
  selection=$(printf ' or %s' "${GPU_TESTS[@]}")
  timeout 120 "$PY" -m pytest -q -p no:cacheprovider tests/test_gpu.py tests/test_ppo.py -k "${selection:4}" 2>&1 \
    | tail -n 15 > "$OUT/gpu_tests.txt"
  [ "${PIPESTATUS[0]}" = 0 ]
fi
status+=("tests $?")
tail -n 3 "$OUT/gpu_tests.txt"

# 3. The gpt2-small preset through the recipe on local text (the Hub is out of reach there): tokens/s and MFU.
DATA=.gpu-carry/input.txt
if [ "${GPU_CHECK_SMOKE:-0}" = 1 ]; then  # any text will do: the README's
  DATA="$WORK/readme.txt" && cp README.md "$DATA"
elif [ ! -f "$DATA" ]; then  # the embedded world's pretraining text
  DATA="$WORK/world.txt"
  "$PY" -c "from hf_gpt.world import pretraining_documents as d; print('\n\n'.join(d(2000)))" > "$DATA"
fi
timeout 180 "$PY" recipes/pretrain.py --config gpt2-small --dataset_name "" --streaming false --data_files "$DATA" \
  --save_steps 1000 --stream_validation_documents 0 --tokenizer_documents 0 --disable_tqdm true "${SHAPE[@]}" \
  --output_dir "$WORK/gpt2-small" > "$WORK/gpt2_small.log" 2>&1
status+=("gpt2-small $?")
grep -E "tokens_per_second|eval_loss" "$WORK/gpt2_small.log" > "$OUT/gpt2_small.txt"
[ "${status[-1]}" = "gpt2-small 0" ] || tail -n 20 "$WORK/gpt2_small.log" >> "$OUT/gpt2_small.txt"
cp "$WORK/gpt2-small/training_summary.json" "$OUT/gpt2_small_summary.json" 2>/dev/null
tail -n 2 "$OUT/gpt2_small.txt"

printf '%s\n' "${status[@]}" | tee "$OUT/status.txt"
! grep -q -v -E " 0$" "$OUT/status.txt"
