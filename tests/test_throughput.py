import json

import pytest
import torch

from hf_gpt import HfGptForCausalLM
from hf_gpt.data import write_jsonl
from hf_gpt.hub import render_card
from hf_gpt.pretrain import PretrainConfig, pretrain
from hf_gpt.throughput import (
    PEAK_TFLOPS,
    ThroughputMeter,
    batch_shapes,
    count_parameters,
    forward_flops_per_token,
    peak_flops,
)


def test_flops_per_token_is_2n_plus_attention(tiny_config):
    config = tiny_config(vocab_size=300, hidden_size=32, num_hidden_layers=2, position_embedding_type="learned")
    model = HfGptForCausalLM(config)
    d, ff, v = 32, config.intermediate_size, 300
    block = 4 * (d * d + d) + (d * ff + ff) + (ff * d + d) + 2 * 2 * d  # W^Q,K,V,O + FFN + two LayerNorms
    n = v * d + 2 * block + 2 * d  # tied embedding/lm_head once, final LayerNorm; learned positions not counted
    assert count_parameters(model) == n
    assert forward_flops_per_token(model, seq_len=64) == 2 * n + 4 * 2 * d * 64


def test_meter_counts_training_time_only(monkeypatch):
    clock = iter([0.0, 2.0, 10.0, 11.0, 11.0, 11.0, 11.0])  # add, pause (an eval), add, report: 2 s + 1 s of training
    monkeypatch.setattr("hf_gpt.throughput.time.perf_counter", lambda: next(clock))
    meter = ThroughputMeter("cpu", peak_tflops=1e-9, processes=2)  # 1000 FLOP/s peak
    meter.add(300, 1500)
    meter.pause()
    meter.add(0, 0)
    meter.add(300, 1500)
    report = meter.report("perf/")
    assert report == {"perf/tokens_per_second": 600 * 2 / 3, "perf/mfu": 1.0}  # all processes; per device
    assert meter.summary() == {"tokens_per_second": 400.0, "mfu": 1.0, "device": "cpu", "peak_tflops": 1e-9}


def test_peak_from_the_table_or_the_flag(monkeypatch):
    assert peak_flops("cpu") is None  # no MFU on a CPU unless the user names a peak
    assert peak_flops("cpu", 2.5) == 2.5e12
    # Each GPU of the table, named as the driver names it, gets its own row's peak: a shorter name that is part of a
    # longer one (H100 in "H100 PCIe", L4 in "L40S") must not shadow it.
    for key, tflops in PEAK_TFLOPS:
        monkeypatch.setattr("hf_gpt.throughput.device_name", lambda device, key=key: f"NVIDIA {key} 80GB HBM3")
        assert peak_flops("cuda") == tflops * 1e12, key
        assert peak_flops("cuda", 1.5) == 1.5e12  # the flag wins over the table
    monkeypatch.setattr("hf_gpt.throughput.device_name", lambda device: "Some New GPU")
    assert peak_flops("cuda") is None


def test_batch_shapes_of_each_collator():
    ids = lambda b, t: torch.zeros(b, t, dtype=torch.long)
    assert batch_shapes({"input_ids": ids(4, 9), "attention_mask": ids(4, 9)}) == [(4, 9)]  # LM, SFT, RM, DPO
    assert batch_shapes({"prompt_ids": ids(2, 5), "completion_ids": ids(2, 7)}) == [(2, 12)]  # GRPO, RLOO
    assert batch_shapes({"chosen_input_ids": ids(2, 3), "rejected_input_ids": ids(2, 4)}) == [(2, 3), (2, 4)]


def test_pretraining_logs_tokens_per_second_and_mfu(tmp_path, tokenizer):
    from pydoc_data.topics import topics

    tokenizer.save_pretrained(tmp_path / "tok")
    data = write_jsonl(tmp_path / "d.jsonl", [{"text": t} for t in list(topics.values())[:20]])
    args = PretrainConfig(
        output_dir=str(tmp_path / "run"), data_files=[str(data)], tokenizer_name_or_path=str(tmp_path / "tok"),
        block_size=32, n_layer=2, n_head=2, n_embd=32, per_device_train_batch_size=4, max_steps=6, logging_steps=2,
        eval_steps=3, save_steps=3, report_to="none", disable_tqdm=True, sample_max_new_tokens=2,
        peak_tflops=1e-6, use_cpu=True)
    trainer = pretrain(args)
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 3 and all(h["tokens_per_second"] > 0 and h["mfu"] > 0 for h in logs)
    flops_per_token = 3 * forward_flops_per_token(trainer.model, 32)  # every row is a full block
    for h in logs:  # MFU = tokens/s × FLOPs per token / peak, the peak being 1 MFLOP/s here
        assert h["mfu"] == pytest.approx(h["tokens_per_second"] * flops_per_token / 1e6, rel=1e-3)
    summary = json.loads((tmp_path / "run" / "training_summary.json").read_text())["throughput"]
    assert summary["device"] == "cpu" and summary["peak_tflops"] == 1e-6 and summary["tokens_per_second"] > 0
    assert "tokens/s on cpu, MFU" in render_card(tmp_path / "run", "me/tiny")
