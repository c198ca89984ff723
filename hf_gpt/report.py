"""Pictures and tables for the pipeline report: what each lecture concept looks like in the trained model."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from .modeling_hf_gpt import sinusoidal_position_encoding  # noqa: E402


def plot_position_encoding(path: Path, length: int = 64, dim: int = 128, base: float = 10000.0) -> Path:
    """The (L, d) sinusoidal matrix P(k,2i)=sin(k/n^(2i/d)), P(k,2i+1)=cos(k/n^(2i/d)) as a heatmap."""
    fig, ax = plt.subplots(figsize=(7, 3.5))
    image = ax.imshow(sinusoidal_position_encoding(length, dim, base).numpy(), aspect="auto", cmap="RdBu")
    ax.set_xlabel("dimension i")
    ax.set_ylabel("position k")
    ax.set_title(f"Sinusoidal positional encoding (n = {base:g})")
    fig.colorbar(image)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


@torch.no_grad()
def plot_attention(model, tokenizer, text: str, path: Path, layer: int = -1) -> Path:
    """softmax(QKᵀ/√d_k) of one layer (eager attention), averaged over heads: masked, so upper triangle is 0."""
    previous = model.config._attn_implementation
    model.set_attn_implementation("eager")
    ids = tokenizer(text, return_tensors="pt").input_ids.to(model.device)
    weights = model(ids, output_attentions=True).attentions[layer][0].mean(0).float().cpu()  # (T, T)
    model.set_attn_implementation(previous)
    tokens = [tokenizer.decode([t]) for t in ids[0]]
    fig, ax = plt.subplots(figsize=(6, 5.5))
    ax.imshow(weights.numpy(), cmap="viridis")
    ax.set_xticks(range(len(tokens)), tokens, rotation=90, fontsize=7)
    ax.set_yticks(range(len(tokens)), tokens, fontsize=7)
    ax.set_title(f"Attention, layer {layer % model.config.num_hidden_layers}, mean over heads")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_sft_loss_mask(tokenizer, messages: list[dict], path: Path) -> Path:
    """One SFT example, token by token: green tokens carry loss (the reply and its eos), grey ones are masked."""
    out = tokenizer.apply_chat_template(messages, return_dict=True, return_assistant_tokens_mask=True)
    tokens = [tokenizer.decode([t]).replace("\n", "⏎") for t in out["input_ids"]]
    fig, ax = plt.subplots(figsize=(10, 1.6 + 0.35 * (len(tokens) // 14)))
    ax.axis("off")
    x, y = 0.0, 1.0
    for token, counted in zip(tokens, out["assistant_masks"]):
        width = 0.012 * max(len(token), 1) + 0.01
        if x + width > 1.0:
            x, y = 0.0, y - 0.18
        ax.text(x, y, token, fontsize=9, va="top", family="monospace",
                bbox={"facecolor": "#9be39b" if counted else "#dddddd", "edgecolor": "none", "pad": 1.5})
        x += width
    ax.set_title("SFT loss mask: green = response tokens (loss), grey = prompt (masked, label -100)", fontsize=9)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_lines(path: Path, title: str, xlabel: str, series: dict[str, list[tuple[float, float]]]) -> Path:
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for label, points in series.items():
        if points:
            ax.plot(*zip(*points), marker="o", markersize=3, label=label)
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def markdown_table(rows: list[dict]) -> str:
    if not rows:
        return ""
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(row[k]) for k in keys) + " |")
    return "\n".join(lines)


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value).replace("|", "/").replace("\n", " ")
