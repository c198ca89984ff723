"""PPO for RLHF as small functions, each readable on its own and tested on its own.

state = the prompt, action = the response, reward = the reward model's score at the last response token, minus a
per-token KL penalty β·(log π − log π_ref) that keeps the policy close to the SFT model.

All tensors here cover response positions only: (B, R), with `mask` 1 on real response tokens (up to and including
the first eos) and 0 after it.

Several processes: each holds a slice of the rollouts. Where a statistic spans the batch (whitening, the mean over
tokens of a loss), `total` (the sum of a tensor over all processes) and `tokens` (the token count over all processes,
divided by their number) make N processes compute what one process would on the whole batch.
"""

from collections.abc import Callable

import torch

Total = Callable[[torch.Tensor], torch.Tensor]


def _local(x: torch.Tensor) -> torch.Tensor:
    return x


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None,
                tokens: torch.Tensor | float | None = None) -> torch.Tensor:
    """Mean over the masked entries; with `tokens`, the masked sum divided by it instead (see the module's note)."""
    mask = mask.to(x.dtype)
    if dim is None:
        return (x * mask).sum() / (mask.sum().clamp(min=1) if tokens is None else tokens)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True, total: Total = _local) -> torch.Tensor:
    n = total(mask.sum().to(x.dtype))
    mean = total((x * mask).sum()) / n.clamp(min=1)
    var = total((((x - mean) ** 2) * mask).sum()) / n.clamp(min=1)
    return var * n / (n - 1) if unbiased and n > 1 else var


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, total: Total = _local) -> torch.Tensor:
    """(x − mean) / std over the masked entries (of every process, with `total`), zero where masked;
    `shift_mean=False` adds the mean back (TRL's flag: rewards keep their sign and level, only their scale is
    normalised)."""
    n = total(mask.sum().to(x.dtype)).clamp(min=1)
    mean, var = total((x * mask).sum()) / n, masked_var(x, mask, total=total)
    whitened = (x - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask


def first_eos_mask(responses: torch.Tensor, eos_token_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mask of tokens up to and including the first eos, the index of the last kept token, and whether eos occurred."""
    is_eos = responses == eos_token_id
    contains_eos = is_eos.any(dim=1)
    positions = torch.arange(responses.shape[1], device=responses.device)
    first = torch.where(contains_eos, is_eos.int().argmax(dim=1), responses.shape[1] - 1)  # (B,)
    mask = (positions[None, :] <= first[:, None]).long()
    return mask, first, contains_eos


def logprobs_from_logits(logits: torch.Tensor, tokens: torch.Tensor, temperature: float) -> torch.Tensor:
    """log π(token | context) with the sampling temperature applied: log softmax(z / T)[token]."""
    logp = torch.log_softmax(logits.float() / temperature, dim=-1)
    return torch.gather(logp, 2, tokens.unsqueeze(-1)).squeeze(-1)


def entropy_from_logits(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    logp = torch.log_softmax(logits.float() / temperature, dim=-1)
    return -(logp.exp() * logp).sum(-1)


def kl_per_token(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str = "k1") -> torch.Tensor:
    """k1: log π − log π_ref (unbiased, can be negative); k3: (r − 1) − log r with r = π_ref/π (≥ 0, lower variance)."""
    log_ratio = logprobs - ref_logprobs
    if estimator == "k1":
        return log_ratio
    if estimator == "k3":
        return torch.expm1(-log_ratio) + log_ratio
    raise ValueError(f"kl_estimator must be 'k1' or 'k3', got {estimator!r}")


def kl_penalized_rewards(scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, last_index: torch.Tensor,
                         kl_coef: float) -> tuple[torch.Tensor, torch.Tensor]:
    """r_t = −β·KL_t at every response token, plus the score at the last one (the eos, or the cut-off)."""
    non_score = -kl_coef * kl * mask
    rewards = non_score.clone()
    rewards[torch.arange(rewards.shape[0], device=rewards.device), last_index] += scores
    return rewards, non_score


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
        lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation: A_t = Σ_l (γλ)^l δ_{t+l}, δ_t = r_t + γ V_{t+1} − V_t; returns = A + V.

    Values after the sequence end count as 0 (the episode is over)."""
    values = values * mask
    rewards = rewards * mask
    advantages = torch.zeros_like(rewards)
    last = torch.zeros(rewards.shape[0], device=rewards.device, dtype=rewards.dtype)
    length = rewards.shape[1]
    for t in reversed(range(length)):
        next_value = values[:, t + 1] if t + 1 < length else torch.zeros_like(last)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last = delta + gamma * lam * last
        advantages[:, t] = last
    advantages = advantages * mask
    return advantages, (advantages + values) * mask


def clipped_policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                        mask: torch.Tensor, cliprange: float, tokens: torch.Tensor | None = None,
                        ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """L = E[max(−A·ρ, −A·clip(ρ, 1−ε, 1+ε))], ρ = π/π_old: the pessimistic of the two surrogate objectives."""
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask, tokens=tokens)
    stats = {
        "clipfrac": masked_mean((clipped > unclipped).float(), mask),
        "approxkl": 0.5 * masked_mean(log_ratio**2, mask),
        "ratio": masked_mean(ratio, mask),
    }
    return loss, stats


def clipped_value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
                       cliprange_value: float, tokens: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """L_V = ½ E[max((V − R)², (clip(V, V_old ± ε) − R)²)]; also the fraction where the clipped term was larger."""
    clipped = old_values + torch.clamp(values - old_values, -cliprange_value, cliprange_value)
    unclipped_loss, clipped_loss = (values - returns) ** 2, (clipped - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(unclipped_loss, clipped_loss), mask, tokens=tokens)
    return loss, masked_mean((clipped_loss > unclipped_loss).float(), mask)


def gumbel_noise(generators: list[torch.Generator], vocab: int, device) -> torch.Tensor:
    """g = −log(−log u), u ~ U(0, 1), one row per generator: argmax(z/τ + g) is a sample of softmax(z/τ) (the
    Gumbel-max trick). Each row draws from its own generator, so a rollout's tokens depend on its (seed, step, row)
    alone, not on which process or batch it is sampled in."""
    u = torch.stack([torch.rand(vocab, generator=g, device=device) for g in generators])
    return -torch.log(-torch.log(u.clamp(min=1e-20)))


class AdaptiveKLController:
    """β ← β·(1 + clip(KL/target − 1, ±0.2)·n/horizon) (Ziegler et al. 2019): raise β when KL overshoots the target."""

    def __init__(self, init_kl_coef: float, target: float, horizon: int):
        self.value, self.target, self.horizon = init_kl_coef, target, horizon

    def update(self, current_kl: float, n_steps: int) -> None:
        error = min(max(current_kl / self.target - 1, -0.2), 0.2)
        self.value *= 1 + error * n_steps / self.horizon
