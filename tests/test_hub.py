"""Hub upload and download against a local Hub (tests/hub_server.py on 127.0.0.1), through real subprocesses."""

import hashlib
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from hub_server import TOKEN, hub_env, push_cli, start
from huggingface_hub import ModelCard

from hf_gpt import HfGptForCausalLM
from hf_gpt.hub import files_to_upload, push_folder, render_card, write_summary

DOWNLOAD_AND_LOAD = textwrap.dedent("""
    import hashlib, json, sys
    sys.modules["hf_gpt"] = None  # as on a machine without hf_gpt: only the repo's code may run
    import torch
    from huggingface_hub import snapshot_download
    from transformers import AutoModelForCausalLM, AutoTokenizer
    repo, revision = sys.argv[1], sys.argv[2]
    folder = snapshot_download(repo, revision=revision)
    from pathlib import Path
    hashes = {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
              for p in Path(folder).rglob("*") if p.is_file()}
    tok = AutoTokenizer.from_pretrained(repo, revision=revision, trust_remote_code=True)
    model = AutoModelForCausalLM.from_pretrained(repo, revision=revision, trust_remote_code=True).eval()
    ids = tok("The assert statement", return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(ids).logits
    out = model.generate(ids, max_new_tokens=6, do_sample=False)
    print("RESULT " + json.dumps({"hashes": hashes, "logits": logits[0, -1, :5].tolist(), "generated": out[0].tolist(),
                                  "module": type(model).__module__}))
""")


@pytest.fixture()
def trained(saved_model, tmp_path) -> Path:
    folder = tmp_path / "model"
    model = HfGptForCausalLM.from_pretrained(saved_model)
    model.save_pretrained(folder)
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(saved_model).save_pretrained(folder)
    (folder / "training_args.bin").write_bytes(b"pickle: must never be uploaded")
    (folder / "checkpoint-5").mkdir()
    (folder / "checkpoint-5" / "optimizer.pt").write_bytes(b"nope")
    write_summary(folder, "base", {"val_bpb": 1.234, "val_loss": 2.5}, data="roneneldan/TinyStories", steps=20)
    return folder


def local_hashes(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in folder.rglob("*") if p.is_file()}


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["regular", "lfs"])
def test_push_download_round_trip(trained, tmp_path, mode):
    server, hub, url = start(mode)
    try:
        env = hub_env(url, tmp_path)
        before = local_hashes(trained)
        pushed = push_cli(trained, "tester/tiny-gpt", env, "--revision", "v1")
        assert pushed.returncode == 0, pushed.stderr[-3000:]
        assert TOKEN not in pushed.stdout + pushed.stderr
        assert local_hashes(trained) == before  # the local folder is untouched
        if mode == "lfs":
            assert hub.lfs  # bytes went through the LFS batch API
        loaded = subprocess.run([sys.executable, "-c", DOWNLOAD_AND_LOAD, "tester/tiny-gpt", "v1"], env=env,
                                capture_output=True, text=True, timeout=300, cwd=tmp_path)
        assert loaded.returncode == 0, loaded.stderr[-3000:]
        result = json.loads(next(line[7:] for line in loaded.stdout.splitlines() if line.startswith("RESULT ")))
    finally:
        server.shutdown()
    uploaded = {p.relative_to(trained).as_posix() for p in files_to_upload(trained)}
    assert set(result["hashes"]) == uploaded | {"README.md"}
    assert all(result["hashes"][name] == before[name] for name in uploaded)
    assert "training_args.bin" not in result["hashes"] and not any("checkpoint" in n for n in result["hashes"])
    assert {"modeling_hf_gpt.py", "configuration_hf_gpt.py", "model.safetensors", "tokenizer.json"} <= uploaded
    assert result["module"].startswith("transformers_modules")
    model = HfGptForCausalLM.from_pretrained(trained).eval()
    from transformers import AutoTokenizer

    ids = AutoTokenizer.from_pretrained(trained)("The assert statement", return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(torch.tensor(result["logits"]), model(ids).logits[0, -1, :5])
    assert result["generated"] == model.generate(ids, max_new_tokens=6, do_sample=False)[0].tolist()


def test_model_card_metadata(trained):
    text = render_card(trained, "tester/tiny-gpt")
    card = ModelCard(text)
    data = card.data.to_dict()
    assert data["library_name"] == "transformers" and data["license"] == "apache-2.0"
    assert {"hf-gpt", "base"} <= set(data["tags"]) and data["datasets"] == ["roneneldan/TinyStories"]
    result = card.data.eval_results[0]
    assert result.metric_type == "bpb" and result.metric_value == pytest.approx(1.234)
    assert "trust_remote_code=True" in text and "hallucination" in text and "val_bpb: 1.2340" in text


@pytest.mark.parametrize("stage, metric", [("sft", "eval_loss"), ("reward", "pairwise_accuracy"),
                                           ("ppo", "score_last")])
def test_every_stage_has_a_card(trained, stage, metric):
    write_summary(trained, stage, {metric: 0.5})
    card = ModelCard(render_card(trained, "tester/x"))
    assert stage in card.data.tags and card.data.eval_results[0].metric_value == 0.5


def test_wrong_repo_id_is_caught_before_any_work(trained):
    with pytest.raises(ValueError, match="Invalid repo id 'not a repo!!'"):
        push_folder(trained, "not a repo!!")


@pytest.mark.slow
def test_missing_or_invalid_token(trained, tmp_path):
    server, hub, url = start()
    try:
        for token in (None, "hf_wrong"):
            result = push_cli(trained, "tester/x", hub_env(url, tmp_path, token))
            assert result.returncode == 1 and "Traceback" not in result.stderr
            assert "No usable Hugging Face token" in result.stderr and "hf_wrong" not in result.stderr
        assert hub.repos == {}  # nothing was created
    finally:
        server.shutdown()


def test_server_error_mid_upload(trained, tmp_path):
    server, hub, url = start()
    try:
        hub.fail_commits = 5  # every retry fails too
        before = local_hashes(trained)
        result = push_cli(trained, "tester/x", hub_env(url, tmp_path))
        assert result.returncode == 1 and "Traceback" not in result.stderr
        assert "failed (HTTP 500); nothing local was changed" in result.stderr
        assert local_hashes(trained) == before
        assert hub.repos["tester/x"]["main"] == {}  # no half commit on the Hub either
    finally:
        server.shutdown()


def test_recipe_push_to_hub(tmp_path, tokenizer):
    from pydoc_data.topics import topics

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(list(topics.values())[:20]), encoding="utf-8")
    server, hub, url = start()
    try:
        recipe = Path(__file__).parents[1] / "recipes" / "pretrain.py"
        result = subprocess.run([sys.executable, str(recipe), "--config", "tiny", "--data_files", str(corpus),
                                 "--output_dir", str(tmp_path / "out"), "--max_steps", "4", "--eval_steps", "4",
                                 "--save_steps", "4", "--push_to_hub", "true", "--hub_model_id", "tester/pushed",
                                 "--disable_tqdm", "true"], env=hub_env(url, tmp_path), capture_output=True,
                                text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        files = hub.repos["tester/pushed"]["main"]
        assert {"model.safetensors", "config.json", "modeling_hf_gpt.py", "tokenizer.json", "README.md"} <= set(files)
        assert not any(name.endswith(".bin") or name.startswith("checkpoint") for name in files)
        assert hub.commits == 1  # one commit at the end, not one per checkpoint
        assert "validation bits per byte" in files["README.md"].decode()
    finally:
        server.shutdown()
    # The token reaches neither the saved arguments nor the run record.
    for path in (tmp_path / "out").rglob("*"):
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), path


def test_push_uploads_only_the_model_files(trained, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("private key")
    (trained / "notes.txt").write_text("my notes")
    (trained / "link.json").symlink_to(secret)
    (trained / "value_model").mkdir()
    (trained / "value_model" / "evil.py").write_text("import os")
    (trained / "value_model" / "config.json").symlink_to(secret)
    names = {p.relative_to(trained).as_posix() for p in files_to_upload(trained)}
    assert "notes.txt" not in names and "link.json" not in names and not any("value_model" in n for n in names)
    assert {"config.json", "model.safetensors", "tokenizer.json", "modeling_hf_gpt.py"} <= names
    # The opening bytes of a pickle (protocol 4) renamed .safetensors: no safetensors header.
    (trained / "model.safetensors").write_bytes(b"\x80\x04\x95\x1a\x00\x00\x00\x00\x00\x00\x00}\x94.")
    with pytest.raises(ValueError, match="model.safetensors is not a valid safetensors file"):
        files_to_upload(trained)
