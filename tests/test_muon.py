"""`--muon true`: Muon on the blocks' weight matrices, AdamW on the rest, as one optimizer every stage and PPO use; a
checkpoint restores both, so a resumed run ends on the same weights."""

import json

import pytest
import torch
from test_stages import inputs, killed_after_first_checkpoint, stage_argv, weights  # noqa: F401  (fixture)

from hf_gpt import HfGptForSequenceClassification
from hf_gpt.muon import MuonWithAdamW, parameter_groups
from hf_gpt.recipe_utils import run_recipe

MATRICES = ("q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj")


def names(model, params) -> set[str]:
    ids = {id(p) for p in params}
    return {name for name, p in model.named_parameters() if id(p) in ids}


@pytest.mark.parametrize("positions", ["sinusoidal", "learned"])
def test_muon_gets_the_blocks_matrices_and_adamw_the_rest(tiny_model, positions):
    model = tiny_model(position_embedding_type=positions)
    muon, decay, plain = parameter_groups(model)
    layers = model.config.num_hidden_layers
    assert names(model, muon) == {f"model.layers.{i}.{part}.{m}.weight" for i in range(layers)
                                  for part, ms in (("attention", MATRICES[:4]), ("feed_forward", MATRICES[4:]))
                                  for m in ms}
    assert "model.embed_tokens.weight" in names(model, decay)  # the tied head is this same tensor
    assert (positions == "learned") == ("model.embed_positions.weight" in names(model, decay))
    assert all(n.endswith("bias") or "norm" in n for n in names(model, plain))
    assert len(muon) + len(decay) + len(plain) == len(list(model.parameters()))
    head = HfGptForSequenceClassification(model.config.__class__(**{**model.config.to_dict(), "num_labels": 1}))
    assert "score.weight" in names(head, parameter_groups(head)[1])  # a new head is not a hidden matrix


def losses_and_weights(model, optimizer, batches) -> torch.Tensor:
    for ids in batches:
        model(ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_one_optimizer_steps_as_muon_and_adamw_apart_and_resumes_exactly(tiny_model):
    batches = [torch.randint(3, 300, (2, 16), generator=torch.Generator().manual_seed(i)) for i in range(5)]
    model = tiny_model()
    combined = losses_and_weights(model, MuonWithAdamW(model, muon_lr=0.02, adam_lr=1e-3, weight_decay=0.1), batches)

    apart = tiny_model()  # the same seed: the same start
    muon, decay, plain = parameter_groups(apart)
    inner = [torch.optim.Muon(muon, lr=0.02, weight_decay=0.1),
             torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": plain, "weight_decay": 0.0}],
                               lr=1e-3)]
    for ids in batches:
        apart(ids, labels=ids).loss.backward()
        for opt in inner:
            opt.step()
            opt.zero_grad()
    assert torch.equal(combined, torch.cat([p.detach().flatten() for p in apart.parameters()]))
    assert not torch.equal(combined, torch.cat([p.detach().flatten() for p in tiny_model().parameters()]))

    first = tiny_model()  # three steps, a checkpoint of the optimizer, a new one loading it, two more steps
    optimizer = MuonWithAdamW(first, muon_lr=0.02, adam_lr=1e-3, weight_decay=0.1)
    losses_and_weights(first, optimizer, batches[:3])
    saved = optimizer.state_dict()
    resumed = MuonWithAdamW(first, muon_lr=0.5, adam_lr=0.5)  # wrong rates: the checkpoint's must win
    resumed.load_state_dict(saved)
    assert resumed.muon.state is resumed.state and resumed.muon.param_groups[0]["lr"] == 0.02
    assert torch.equal(losses_and_weights(first, resumed, batches[3:]), combined)


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["pretrain", "sft", "reward", "ppo"])
def test_a_stage_with_muon_resumes_to_the_same_weights(stage, inputs, tmp_path):  # noqa: F811
    argv = [*stage_argv(stage, inputs), "--muon", "true", "--muon_learning_rate", "0.05"]
    full = tmp_path / "full"
    run_recipe(stage, [*argv, "--output_dir", str(full)])
    adam = tmp_path / "adam"
    run_recipe(stage, [*stage_argv(stage, inputs), "--output_dir", str(adam)])
    assert any(not torch.equal(a, b) for a, b in zip(weights(full).values(), weights(adam).values()))
    checkpoint = sorted(full.glob("checkpoint-*"))[0]
    optimizer = next(checkpoint.glob("optimizer.*"))  # Trainer's optimizer.pt, Accelerate's optimizer.bin (PPO)
    groups = torch.load(optimizer, weights_only=True)["param_groups"]
    assert sorted(g["use_muon"] for g in groups) == [False, False, True]
    assert {g["lr"] for g in groups if g["use_muon"]} != {g["lr"] for g in groups if not g["use_muon"]}

    resumed = killed_after_first_checkpoint(full, tmp_path / "resumed")
    run_recipe(stage, [*argv, "--output_dir", str(resumed)])
    expected, got = weights(full), weights(resumed)
    for name in expected:
        assert torch.equal(expected[name], got[name]), f"{stage}: {name} differs after the resume"
    assert json.loads((resumed / "training_summary.json").read_text())["steps"] == 3


def test_muon_under_fsdp_or_without_a_rate_is_refused_with_one_line(one_line, inputs, monkeypatch):  # noqa: F811
    argv = [*stage_argv("pretrain", inputs), "--muon", "true", "--output_dir", "unused"]
    assert "muon_learning_rate must be > 0" in one_line("pretrain", [*argv, "--muon_learning_rate", "0"])
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("HF_GPT_FSDP_ON_CPU", "1")
    assert "cannot run under FSDP" in one_line("pretrain", argv)
