import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from transformers import EvalPrediction

from hf_gpt import HfGptForCausalLM
from hf_gpt.data import build_lm_datasets, load_documents, pack_into_blocks
from hf_gpt.distributed import multi_process_on_cpu
from hf_gpt.pretrain import (
    PretrainConfig,
    bits_per_byte,
    build_model,
    make_compute_metrics,
    per_token_nll,
    token_byte_lengths,
)
from hf_gpt.recipe_utils import resolve_config
from hf_gpt.tokenizer import special_token_ids

DRIVER = Path(__file__).with_name("pretrain_driver.py")


def test_pack_into_blocks_keeps_every_token():
    docs = [[10, 11, 12], [20, 21], [30, 31, 32, 33, 34], [40]]
    blocks = list(pack_into_blocks(docs, block_size=4, eos_token_id=1))
    assert blocks == [[10, 11, 12, 1], [20, 21, 1, 30], [31, 32, 33, 34]]  # eos after each document
    stream = [t for d in docs for t in (*d, 1)]  # 15 tokens: 3 full blocks, remainder 3 dropped
    assert len(blocks) == len(stream) // 4
    assert [t for b in blocks for t in b] == stream[: len(blocks) * 4]
    assert all(len(b) == 4 for b in blocks)


def write_jsonl(path: Path, texts: list[str]) -> Path:
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    return path


def test_build_lm_datasets_counts_tokens(tokenizer, tmp_path):
    from pydoc_data.topics import topics

    texts = list(topics.values())[:30]
    raw = load_documents([str(write_jsonl(tmp_path / "d.jsonl", texts))])
    train, val = build_lm_datasets(raw, tokenizer, block_size=64, validation_fraction=0.2)
    stream = [t for text in texts for t in (*tokenizer(text).input_ids, tokenizer.eos_token_id)]
    n_blocks = len(stream) // 64
    assert len(train) + len(val) == n_blocks and len(val) == round(n_blocks * 0.2)
    packed = [t for ds in (train, val) for row in ds for t in row["input_ids"]]
    assert packed == stream[: n_blocks * 64]  # validation is the tail of the stream, nothing lost or repeated


def test_txt_file_is_one_stream_with_line_breaks(tokenizer, tmp_path):
    path = tmp_path / "t.txt"
    text = "First line.\nSecond line.\n\nThird.\n" * 40
    path.write_text(text, encoding="utf-8")
    train, val = build_lm_datasets(load_documents([str(path)]), tokenizer, block_size=16, validation_fraction=0.1)
    ids = [t for ds in (train, val) for row in ds for t in row["input_ids"]]
    assert tokenizer.decode(ids) == tokenizer.decode(tokenizer(text).input_ids[: len(ids)])
    assert tokenizer.eos_token_id not in ids[:-1]


def test_bits_per_byte_matches_hand_computation(tokenizer, tiny_config):
    torch.manual_seed(0)
    model = HfGptForCausalLM(tiny_config(vocab_size=len(tokenizer), **special_token_ids(tokenizer))).eval()
    texts = ["The assert statement is a debugging aid.", "Assignment statements (re)bind names."]
    ids = torch.tensor([tokenizer(t).input_ids[:8] + [tokenizer.eos_token_id] for t in texts])
    with torch.no_grad():
        logits = model(ids).logits
    # By hand: -log p of each next token, summed, over the UTF-8 bytes those tokens spell (eos spells none).
    log_probs = torch.log_softmax(logits, -1)
    total_nll, total_bytes = 0.0, 0
    for row in range(2):
        for t in range(ids.shape[1] - 1):
            target = ids[row, t + 1].item()
            if target == tokenizer.eos_token_id:
                continue
            total_nll -= log_probs[row, t, target].item()
            total_bytes += len(tokenizer.decode([target]).encode("utf-8"))
    expected = total_nll / math.log(2) / total_bytes
    nll = per_token_nll(logits, ids).numpy()
    assert bits_per_byte(nll, ids[:, 1:].numpy(), token_byte_lengths(tokenizer)) == pytest.approx(expected, rel=1e-5)
    metrics = make_compute_metrics(tokenizer)(EvalPrediction(predictions=nll, label_ids=ids.numpy()))
    assert metrics["bpb"] == pytest.approx(expected, rel=1e-5)
    mean_nll = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
    assert metrics["perplexity"] == pytest.approx(math.exp(mean_nll.item()), rel=1e-5)


def test_token_byte_lengths_for_multibyte_text(tokenizer):
    lengths = token_byte_lengths(tokenizer)
    text = "대한민국 😀 tabs\t"
    assert lengths[np.array(tokenizer(text).input_ids)].sum() == len(text.encode("utf-8"))
    assert lengths[tokenizer.eos_token_id] == lengths[tokenizer.pad_token_id] == 0


def run_driver(out: Path, data: Path, tok: Path, batch: int, kill: int | None = None):
    cmd = [sys.executable, str(DRIVER), str(out), str(data), str(tok), str(batch)] + ([str(kill)] if kill else [])
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})


def losses(out: Path, key: str = "eval_loss") -> tuple[dict[int, float], float]:
    history = json.loads((out / "checkpoint-12" / "trainer_state.json").read_text())["log_history"]
    train = {h["step"]: h["loss"] for h in history if "loss" in h}
    final_eval = [h[key] for h in history if key in h][-1]
    return train, final_eval


@pytest.fixture(scope="module")
def driver_inputs(tmp_path_factory, tokenizer):
    from pydoc_data.topics import topics

    folder = tmp_path_factory.mktemp("driver")
    tokenizer.save_pretrained(folder / "tok")
    data = write_jsonl(folder / "docs.jsonl", list(topics.values())[:40])
    return folder, data, folder / "tok"


@pytest.fixture(scope="module")
def reference_run(driver_inputs) -> Path:
    """One process, batch 8, never interrupted: what the resumed run must reproduce."""
    folder, data, tok = driver_inputs
    result = run_driver(folder / "ref", data, tok, batch=8)
    assert result.returncode == 0, result.stderr[-2000:]
    return folder / "ref"


@pytest.mark.slow
@pytest.mark.xdist_group("pretrain-driver")
def test_resume_after_sigkill_matches_uninterrupted_run(driver_inputs, reference_run):
    folder, data, tok = driver_inputs
    killed = run_driver(folder / "killed", data, tok, batch=8, kill=8)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert (folder / "killed" / "checkpoint-8").is_dir() and not (folder / "killed" / "checkpoint-12").exists()
    resumed = run_driver(folder / "killed", data, tok, batch=8)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    (ref_train, ref_eval), (res_train, res_eval) = losses(reference_run), losses(folder / "killed")
    for step in range(9, 13):
        assert res_train[step] == pytest.approx(ref_train[step], abs=1e-6), step
    assert res_eval == pytest.approx(ref_eval, abs=1e-6)
    assert (folder / "killed" / "model.safetensors").exists() and (folder / "killed" / "curves.png").exists()


def test_training_losses_do_not_depend_on_sampling_at_evaluations(driver_inputs, tmp_path):
    """Sampling text at each evaluation draws from a forked RNG: with dropout on, the training losses are the same
    whether or not the evaluations sampled (seeding the training RNG there would repeat dropout masks)."""
    from hf_gpt.pretrain import pretrain

    _, data, tok = driver_inputs

    def train_losses(name: str, prompts: list[str]) -> list[float]:
        args = PretrainConfig(output_dir=str(tmp_path / name), data_files=[str(data)], tokenizer_name_or_path=str(tok),
                              block_size=32, n_layer=1, n_head=2, n_embd=32, dropout=0.3, max_steps=6, eval_steps=2,
                              logging_steps=1, per_device_train_batch_size=4, save_strategy="no", report_to="none",
                              disable_tqdm=True, sample_prompts=prompts, sample_max_new_tokens=4, seed=1)
        trainer = pretrain(args)
        return [h["loss"] for h in trainer.state.log_history if "loss" in h]

    sampled, silent = train_losses("sampled", ["The", "A"]), train_losses("silent", [])
    assert len(sampled) == 6 and sampled == silent
    assert "## step 2" in (tmp_path / "sampled" / "samples.md").read_text()


# ------------------------------------------------------------------ bad input


def test_missing_empty_and_non_utf8_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        load_documents([str(tmp_path / "nope.txt")])
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(ValueError, match="empty"):
        load_documents([str(tmp_path / "empty.txt")])
    (tmp_path / "korean.txt").write_bytes("안녕하세요".encode("cp949"))
    with pytest.raises(ValueError, match="korean.txt is not valid UTF-8 .*iconv"):
        load_documents([str(tmp_path / "korean.txt")])


def test_missing_text_column(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"body": "hello"}\n')
    with pytest.raises(ValueError, match=r"no column 'text' \(it has \['body'\]\)"):
        load_documents([str(path)])
    assert load_documents([str(path)], text_column="body")["train"][0]["body"] == "hello"


def test_an_untied_head_is_a_matrix_of_its_own(tokenizer, tmp_path):
    args = PretrainConfig(output_dir=str(tmp_path), block_size=32, n_layer=1, n_head=2, n_embd=32,
                          tie_word_embeddings=False)
    untied = build_model(args, tokenizer)
    assert untied.lm_head.weight is not untied.model.embed_tokens.weight and not untied.config.tie_word_embeddings
    tied = build_model(PretrainConfig(output_dir=str(tmp_path), block_size=32, n_layer=1, n_head=2, n_embd=32),
                       tokenizer)
    assert tied.lm_head.weight is tied.model.embed_tokens.weight
    assert sum(p.numel() for p in untied.parameters()) == sum(p.numel() for p in tied.parameters()) + 32 * 600


def test_block_size_and_vocab_checks(tokenizer, tmp_path, tiny_config):
    with pytest.raises(ValueError, match="block_size=128 is larger than max_position_embeddings=64"):
        PretrainConfig(output_dir=str(tmp_path), block_size=128, max_position_embeddings=64)
    small = HfGptForCausalLM(tiny_config(vocab_size=300))
    small.save_pretrained(tmp_path / "small")
    args = PretrainConfig(output_dir=str(tmp_path), model_name_or_path=str(tmp_path / "small"), block_size=32)
    with pytest.raises(ValueError, match="tokenizer has 600 tokens but the model's vocab_size is 300"):
        build_model(args, tokenizer)


def test_unknown_preset_lists_the_presets():
    assert resolve_config("tiny", "pretrain").endswith("pretrain_tiny.yaml")
    with pytest.raises(ValueError, match="Unknown pretrain config 'tiniest'.*shakespeare.*tiny"):
        resolve_config("tiniest", "pretrain")


def test_recipe_bad_input_is_one_line(tmp_path):
    recipe = Path(__file__).parents[1] / "recipes" / "pretrain.py"
    result = subprocess.run([sys.executable, str(recipe), "--config", "tiny", "--data_files", "missing.txt",
                             "--output_dir", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "error: Data file not found: missing.txt. Check the path in dataset_name / data_files.")


@pytest.mark.slow
def test_tiny_preset_on_shakespeare_lowers_val_loss(tmp_path, shared_data):
    shared_data("tinyshakespeare/input.txt")
    recipe = Path(__file__).parents[1] / "recipes" / "pretrain.py"
    result = subprocess.run([sys.executable, str(recipe), "--config", "tiny", "--output_dir", str(tmp_path),
                             "--disable_tqdm", "true"], capture_output=True, text=True, timeout=600,
                            cwd=Path(__file__).parents[1])
    assert result.returncode == 0, result.stderr[-2000:]
    history = json.loads((tmp_path / "checkpoint-20" / "trainer_state.json").read_text())["log_history"]
    evals = [h for h in history if "eval_bpb" in h]
    assert evals[-1]["eval_loss"] < evals[0]["eval_loss"]
    from transformers import AutoModelForCausalLM

    assert isinstance(AutoModelForCausalLM.from_pretrained(tmp_path), HfGptForCausalLM)
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_gpu_presets_and_configs_on_a_machine_without_one_are_one_line(monkeypatch, tmp_path, one_line):
    """The GPU preset, the multi-GPU launch config and the GPU bench each say "needs a GPU" and what to run instead;
    nothing is left behind."""
    monkeypatch.setattr(torch.accelerator, "is_available", lambda: False)
    line = one_line("pretrain", ["--config", "gpt2-small", "--output_dir", str(tmp_path / "run")])
    assert "mixed precision for a GPU, and this machine has none" in line and "--config tiny" in line
    assert not (tmp_path / "run").exists()
    monkeypatch.setenv("WORLD_SIZE", "8")  # what `accelerate launch --config_file multi_gpu.yaml` sets in each process
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    with pytest.raises(ValueError, match="this machine has no GPU: for CPU cores use .*multi_cpu.yaml"):
        PretrainConfig(output_dir=str(tmp_path / "run"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU machine the bench runs for real")
def test_the_gpu_bench_without_a_gpu_is_one_line():
    bench = Path(__file__).parents[1] / "bench" / "gpu_bench.py"
    result = subprocess.run([sys.executable, str(bench)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and result.stderr.strip().splitlines() == [
        "bench/gpu_bench.py needs a CUDA GPU and this machine has none: `--device cpu --tiny --no-compile` runs the "
        "same code tiny on the CPU; bench/pretrain_bench.py is the CPU benchmark."]


@pytest.mark.parametrize("name", ["fsdp", "zero2", "zero3"])
def test_fsdp_or_deepspeed_on_cpu_processes_is_refused(name, monkeypatch, tmp_path):
    """Without a GPU, Accelerate would run FSDP/DeepSpeed configs as plain DDP without a word: refused when parsed."""
    config = yaml.safe_load((Path(__file__).parents[1] / "recipes" / "accelerate" / f"{name}.yaml").read_text())
    variable = {"FSDP": "ACCELERATE_USE_FSDP", "DEEPSPEED": "ACCELERATE_USE_DEEPSPEED"}[config["distributed_type"]]
    monkeypatch.setenv("WORLD_SIZE", "2")  # what accelerate launch sets in each process, with the variable
    monkeypatch.setenv(variable, "true")
    monkeypatch.setattr(torch.accelerator, "is_available", lambda: False)
    monkeypatch.delenv("HF_GPT_FSDP_ON_CPU", raising=False)
    with pytest.raises(ValueError, match="(needs GPUs|runs on GPUs), and this machine has none.*multi_cpu.yaml"):
        PretrainConfig(output_dir=str(tmp_path))
    monkeypatch.setenv(variable, "false")  # multi_cpu.yaml: data parallel on CPU cores (Trainer with use_cpu, gloo)
    assert multi_process_on_cpu()


def test_streaming_gives_the_same_blocks(tokenizer, tmp_path):
    from pydoc_data.topics import topics

    data = [str(write_jsonl(tmp_path / "d.jsonl", list(topics.values())[:20]))]
    eager, _ = build_lm_datasets(load_documents(data), tokenizer, block_size=32, validation_fraction=0.0)
    streamed, validation = build_lm_datasets(load_documents(data, streaming=True), tokenizer, block_size=32)
    assert validation is None  # a stream has no tail to hold out: use a dataset with its own validation split
    first = [row["input_ids"] for _, row in zip(range(10), streamed)]
    assert first == [eager[i]["input_ids"] for i in range(10)]


def test_stream_holds_out_its_head_for_validation(tokenizer, tmp_path):
    from pydoc_data.topics import topics

    docs = list(topics.values())[:30]
    data = [str(write_jsonl(tmp_path / "d.jsonl", docs))]
    streamed, validation = build_lm_datasets(load_documents(data, streaming=True), tokenizer, block_size=32,
                                             stream_validation_documents=5)
    head, _ = build_lm_datasets(load_documents([str(write_jsonl(tmp_path / "head.jsonl", docs[:5]))]), tokenizer,
                                block_size=32, validation_fraction=0.0)
    rest, _ = build_lm_datasets(load_documents([str(write_jsonl(tmp_path / "rest.jsonl", docs[5:]))]), tokenizer,
                                block_size=32, validation_fraction=0.0)
    assert validation["input_ids"] == head["input_ids"]  # the first 5 documents, packed
    assert [row["input_ids"] for _, row in zip(range(5), streamed)] == rest["input_ids"][:5]  # training skips them


@pytest.mark.parametrize("preset", ["gpt2-small", "korean-gpu"])
def test_gpu_presets_parse_and_build_the_124m_model(preset, tokenizer, tmp_path):
    from hf_gpt.recipe_utils import parse_recipe_args
    from hf_gpt.throughput import count_parameters

    (args,) = parse_recipe_args((PretrainConfig,), "pretrain", ["--config", preset, "--output_dir", str(tmp_path),
                                                                "--use_cpu", "true"])
    assert args.bf16 and args.torch_compile and args.optim == "adamw_torch_fused" and args.streaming
    assert args.stream_validation_documents > 0 and args.tokenizer_documents  # a held-out head; a bounded BPE run
    tokens_per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.block_size
    assert tokens_per_step == 524_288  # nanoGPT's 0.5M-token batch
    args.vocab_size = len(tokenizer)  # the shape, without training a 32k BPE here
    with torch.device("meta"):
        model = build_model(args, tokenizer)
    shape = (model.config.num_hidden_layers, model.config.num_attention_heads, model.config.hidden_size)
    assert shape == (12, 12, 768) and model.config.max_position_embeddings == 1024
    assert count_parameters(model) == pytest.approx(85e6, rel=0.01)  # 124M with GPT-2's 50k vocabulary
