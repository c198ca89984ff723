import socket
import subprocess
import sys
import time
import urllib.request

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from hf_gpt.generation import chat_reply, generate_text, sampling_config


def test_seeded_generation_is_reproducible(saved_model):
    a = generate_text(str(saved_model), "The assert", seed=3, temperature=1.0, max_new_tokens=12)
    b = generate_text(str(saved_model), "The assert", seed=3, temperature=1.0, max_new_tokens=12)
    c = generate_text(str(saved_model), "The assert", seed=4, temperature=1.0, max_new_tokens=12)
    assert a == b and a != c


def test_temperature_zero_is_greedy(saved_model):
    model = AutoModelForCausalLM.from_pretrained(saved_model).eval()
    ids = AutoTokenizer.from_pretrained(saved_model)("The assert", return_tensors="pt").input_ids
    config = sampling_config(model, max_new_tokens=10, temperature=0)
    assert not config.do_sample
    greedy = model.generate(ids, do_sample=False, max_new_tokens=10, pad_token_id=model.config.pad_token_id)
    assert torch.equal(model.generate(ids, generation_config=config), greedy)


def test_top_p_one_and_top_k_zero_switch_the_filters_off(saved_model):
    model = AutoModelForCausalLM.from_pretrained(saved_model).eval()
    ids = AutoTokenizer.from_pretrained(saved_model)("The assert", return_tensors="pt").input_ids
    config = sampling_config(model, max_new_tokens=8, temperature=0.9, top_p=1.0, top_k=0)
    processors = model._get_logits_processor(generation_config=config, input_ids_seq_length=ids.shape[1],
                                             encoder_input_ids=ids, prefix_allowed_tokens_fn=None,
                                             logits_processor=[])
    names = {type(p).__name__ for p in processors}
    assert "TopPLogitsWarper" not in names and "TopKLogitsWarper" not in names
    assert "TemperatureLogitsWarper" in names
    filtered = sampling_config(model, temperature=0.9, top_p=0.5, top_k=5)
    processors = model._get_logits_processor(generation_config=filtered, input_ids_seq_length=ids.shape[1],
                                             encoder_input_ids=ids, prefix_allowed_tokens_fn=None,
                                             logits_processor=[])
    assert {"TopPLogitsWarper", "TopKLogitsWarper"} <= {type(p).__name__ for p in processors}


@pytest.mark.parametrize("kwargs, message", [({"temperature": -1}, "temperature"), ({"top_p": 0}, "top_p"),
                                             ({"top_k": -2}, "top_k")])
def test_bad_sampling_values(saved_model, kwargs, message):
    model = AutoModelForCausalLM.from_pretrained(saved_model)
    with pytest.raises(ValueError, match=message):
        sampling_config(model, **kwargs)


def test_chat_reply_with_system_prompt(saved_model):
    tokenizer = AutoTokenizer.from_pretrained(saved_model)
    model = AutoModelForCausalLM.from_pretrained(saved_model).eval()
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert chat_reply(model, tokenizer, messages, temperature=0, max_new_tokens=5) == chat_reply(
        model, tokenizer, messages, temperature=0, max_new_tokens=5)


def test_cli_chat_reads_turns_from_stdin(saved_model):
    result = subprocess.run([sys.executable, "-m", "hf_gpt.cli", "chat", str(saved_model), "--temperature", "0",
                             "--max-new-tokens", "4"], input="Hello\nHow are you?\n\n", capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count("gpt> ") == 2 and result.stdout.count("you> ") == 3


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_openai_client_against_transformers_serve(saved_model):
    pytest.importorskip("openai", reason="openai (dev extra) is needed for the serving test")
    pytest.importorskip("fastapi", reason="transformers[serving] is needed for the serving test")
    from openai import OpenAI

    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "hf_gpt.cli", "serve", str(saved_model), "--trust-remote-code",
                               "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(240):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
                break
            except OSError:
                assert server.poll() is None, "the server exited"
                time.sleep(0.5)
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="not-needed")
        messages = [{"role": "system", "content": "You are a helpful assistant."},
                    {"role": "user", "content": "What is the capital of Korea?"}]
        first = client.chat.completions.create(model=str(saved_model), messages=messages, temperature=0.2, top_p=1.0,
                                               max_tokens=8)
        assert first.choices[0].message.role == "assistant" and isinstance(first.choices[0].message.content, str)
        greedy = [client.chat.completions.create(model=str(saved_model), messages=messages, temperature=0,
                                                 max_tokens=8).choices[0].message.content for _ in range(2)]
        assert greedy[0] == greedy[1]  # temperature 0 is greedy: deterministic
        stream = client.chat.completions.create(model=str(saved_model), messages=messages, temperature=0,
                                                max_tokens=8, stream=True)
        streamed = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
        assert streamed == greedy[0]
    finally:
        server.terminate()
        server.wait(timeout=30)
