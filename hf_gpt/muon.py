"""Muon on the hidden weight matrices, AdamW on everything else: one optimizer for every stage and PPO.

Muon (torch.optim.Muon; Jordan et al. 2024, the optimizer of the modded-nanogpt speedrun) replaces each 2-D update by
the nearest orthogonal matrix (momentum, then a few Newton–Schulz iterations), which suits the square-ish matrices
inside the blocks (W^Q, W^K, W^V, W^O and the feed-forward network) and not the embeddings, the head, the norms or the
biases: those stay with AdamW at its own learning rate. The two are held as one `torch.optim.Optimizer` so that
schedulers, `Trainer` checkpoints and Accelerate see one optimizer, and a resumed run restores both states.
"""

import torch
from torch import nn

MUON_HELP = ("Muon (torch.optim.Muon) on the decoder blocks' 2-D weight matrices, AdamW on embeddings, head, norms and "
             "biases (learning_rate); not with FSDP (Muon orthogonalises whole matrices).")


def is_hidden_matrix(name: str, param: nn.Parameter) -> bool:
    """The matrices inside the blocks (W^Q, W^K, W^V, W^O, the FFN's; LoRA's A and B there too); not the embeddings,
    the LM or score head, the norms, the biases."""
    return param.ndim == 2 and ".layers." in f".{name}"


def parameter_groups(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter], list[nn.Parameter]]:
    """(Muon's matrices, AdamW's with weight decay, AdamW's without: biases and norms, as Trainer groups them)."""
    from transformers import Trainer

    decay = set(Trainer.get_decay_parameter_names(None, model))
    muon, adam_decay, adam_plain = [], [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        group = muon if is_hidden_matrix(name, param) else adam_decay if name in decay else adam_plain
        group.append(param)
    return muon, adam_decay, adam_plain


class MuonWithAdamW(torch.optim.Optimizer):
    """One optimizer over two: every param group carries `use_muon`; both inner optimizers share these groups and
    this optimizer's state, so `state_dict`/`load_state_dict` (the base class's) save and restore both."""

    def __init__(self, model: nn.Module, muon_lr: float, adam_lr: float, weight_decay: float = 0.0,
                 betas: tuple[float, float] = (0.9, 0.999), adam_eps: float = 1e-8, momentum: float = 0.95):
        muon, adam_decay, adam_plain = parameter_groups(model)
        if not muon:
            raise ValueError("--muon true found no 2-D weight matrices inside the model's blocks to give Muon.")
        self.muon = torch.optim.Muon([{"params": muon, "use_muon": True}], lr=muon_lr, weight_decay=weight_decay,
                                     momentum=momentum)
        adam = [{"params": adam_decay, "weight_decay": weight_decay, "use_muon": False},
                {"params": adam_plain, "weight_decay": 0.0, "use_muon": False}]
        self.adamw = torch.optim.AdamW([g for g in adam if g["params"]], lr=adam_lr, betas=betas, eps=adam_eps)
        super().__init__(self.muon.param_groups + self.adamw.param_groups, defaults={})
        self._share()

    def _share(self) -> None:
        """Point the inner optimizers at this optimizer's groups and state (again after a load replaced them)."""
        self.muon.param_groups = [g for g in self.param_groups if g["use_muon"]]
        self.adamw.param_groups = [g for g in self.param_groups if not g["use_muon"]]
        self.muon.state = self.adamw.state = self.state

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        self._share()

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.muon.step()
        self.adamw.step()
        return loss


def muon_optimizer(model: nn.Module, args) -> MuonWithAdamW:
    """The optimizer `--muon true` asks for, from a TrainingArguments-like `args` (AdamW's betas, ε, weight decay and
    learning rate as Trainer reads them; Muon's own learning rate)."""
    return MuonWithAdamW(model, muon_lr=args.muon_learning_rate, adam_lr=args.learning_rate,
                         weight_decay=args.weight_decay, betas=(args.adam_beta1, args.adam_beta2),
                         adam_eps=args.adam_epsilon)


class MuonFactory:
    """What transformers' Trainer accepts in `optimizer_cls_and_kwargs` for an optimizer that groups parameters
    itself: instantiated, then called with the model."""

    def __call__(self, model: nn.Module, args) -> MuonWithAdamW:
        return muon_optimizer(model, args)


def use_muon(trainer) -> None:
    """Give a transformers Trainer (built, not yet trained) the Muon + AdamW optimizer when its args ask for it."""
    if getattr(trainer.args, "muon", False):
        trainer.optimizer_cls_and_kwargs = (MuonFactory, {"args": trainer.args})
