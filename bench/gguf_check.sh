#!/usr/bin/env bash
# llama.cpp runs hf-gpt's GGUF files as transformers runs the folders: builds llama.cpp once into a cache, exports the
# demo's base and PPO models (f32, f16, q8_0) and compares prompt tokens, greedy replies and first-step logits in
# English and Korean (bench/gguf_check.py), then runs tests/test_gguf.py with llama.cpp present.
#
#   bash bench/gguf_check.sh [MODEL_FOLDER ...]        (default: runs/world/base runs/world/ppo; `make demo` first)
#
# An installed llama-cpp-python is used as it is. Otherwise llama.cpp comes from llama-cpp-python's source package on
# PyPI (its vendored llama.cpp and its ctypes bindings): only the library is built (~10 minutes on 2 cores), without
# -march=native: llama.cpp's AMX matrix multiply crashed on this project's machine (a Sapphire Rapids VM) for q8_0.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
VERSION=${LLAMA_CPP_PYTHON_VERSION:-0.3.36}
CACHE=${LLAMA_CPP_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/hf-gpt/llama-cpp-python-$VERSION}
MODELS=("$@")
[ ${#MODELS[@]} -gt 0 ] || MODELS=(runs/world/base runs/world/ppo)
for model in "${MODELS[@]}"; do
  [ -f "$model/config.json" ] || { echo "gguf_check: $model is not a model folder (run make demo first)." >&2; exit 2; }
done

if ! "$PYTHON" -c "import llama_cpp" 2>/dev/null; then
  SRC="$CACHE/llama_cpp_python-$VERSION"
  LIB="$SRC/vendor/llama.cpp/build/bin"
  if [ ! -f "$LIB/libllama.so" ]; then
    mkdir -p "$CACHE"
    echo "gguf_check: building llama.cpp from llama-cpp-python $VERSION's source into $CACHE (once)"
    [ -d "$SRC" ] || { "$PYTHON" -m pip download -q --no-binary :all: --no-deps "llama-cpp-python==$VERSION" -d "$CACHE" \
                       && tar xzf "$CACHE/llama_cpp_python-$VERSION.tar.gz" -C "$CACHE"; }
    cmake -S "$SRC/vendor/llama.cpp" -B "$SRC/vendor/llama.cpp/build" -DCMAKE_BUILD_TYPE=Release \
      -DBUILD_SHARED_LIBS=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF \
      -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_COMMON=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
      -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON > "$CACHE/cmake.log"
    cmake --build "$SRC/vendor/llama.cpp/build" -j "$(nproc)" --target llama > "$CACHE/build.log"
    "$PYTHON" -m pip install -q --target "$CACHE/pydeps" diskcache  # the bindings' one import the venv lacks
  fi
  export LLAMA_CPP_LIB_PATH="$LIB" PYTHONPATH="$SRC:$CACHE/pydeps${PYTHONPATH:+:$PYTHONPATH}"
fi

mkdir -p bench/results
status=0
for dtype in f32 f16 q8_0; do
  "$PYTHON" bench/gguf_check.py "${MODELS[@]}" --dtype "$dtype" --out "bench/results/gguf_check_$dtype.md" \
    2> >(grep -v -e "Loading weights" -e "n_ctx_seq" >&2) || status=1
done
HF_HUB_OFFLINE=1 "$PYTHON" -m pytest -q tests/test_gguf.py -k "not demos" || status=1
exit $status
