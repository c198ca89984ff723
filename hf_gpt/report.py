"""Pictures and tables for the pipeline report: what each lecture concept looks like in the trained model."""

import json
from pathlib import Path

import torch
from matplotlib.figure import Figure

from .generation import complete
from .hub import lm_eval_rows, render_template
from .modeling_hf_gpt import sinusoidal_position_encoding
from .run_folder import write_json


def figure(*grid: int, **kwargs) -> tuple:
    """A figure and its axes drawn without pyplot: a library must not switch its user's matplotlib backend."""
    fig = Figure(figsize=kwargs.pop("figsize", None))
    return fig, fig.subplots(*grid, **kwargs)


def plot_position_encoding(path: Path, length: int = 64, dim: int = 128, base: float = 10000.0) -> Path:
    """The (L, d) sinusoidal matrix P(k,2i)=sin(k/n^(2i/d)), P(k,2i+1)=cos(k/n^(2i/d)) as a heatmap."""
    fig, ax = figure(figsize=(7, 3.5))
    image = ax.imshow(sinusoidal_position_encoding(length, dim, base).numpy(), aspect="auto", cmap="RdBu")
    ax.set_xlabel("dimension i")
    ax.set_ylabel("position k")
    ax.set_title(f"Sinusoidal positional encoding (n = {base:g})")
    fig.colorbar(image, label="P(k, i)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


@torch.no_grad()
def plot_attention(model, tokenizer, text: str, path: Path, layer: int = -1, name: str = "") -> Path:
    """softmax(QKᵀ/√d_k) of one layer (eager attention), averaged over heads: a causal model's upper triangle is 0
    (masked), an encoder's is not (bidirectional)."""
    previous = model.config._attn_implementation
    model.set_attn_implementation("eager")
    ids = tokenizer(text, return_tensors="pt").input_ids.to(model.device)
    weights = model(ids, output_attentions=True).attentions[layer][0].mean(0).float().cpu()  # (T, T)
    model.set_attn_implementation(previous)
    tokens = [tokenizer.decode([t]) for t in ids[0]]
    fig, ax = figure(figsize=(6, 5.5))
    image = ax.imshow(weights.numpy(), cmap="viridis")
    ax.set_xticks(range(len(tokens)), tokens, rotation=90, fontsize=7)
    ax.set_yticks(range(len(tokens)), tokens, fontsize=7)
    ax.set_xlabel("key: the token attended to")
    ax.set_ylabel("query: the token attending")
    fig.colorbar(image, label="attention weight (each row sums to 1)")
    ax.set_title(f"{name}Attention, layer {layer % model.config.num_hidden_layers}, mean over heads")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def plot_sft_loss_mask(tokenizer, messages: list[dict], path: Path) -> Path:
    """One SFT example, token by token: green tokens carry loss (the reply and its eos), grey ones are masked."""
    out = tokenizer.apply_chat_template(messages, return_dict=True, return_assistant_tokens_mask=True)
    tokens = [tokenizer.decode([t]).replace("\n", "⏎") for t in out["input_ids"]]
    fig, ax = figure(figsize=(10, 1.6 + 0.35 * (len(tokens) // 14)))
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
    return path


Series = dict[str, list[tuple[float, float]]]  # label → (x, y) points


def plot_panels(path: Path, panels: list[tuple[str, str, str, Series]], width: float = 6.0) -> Path:
    """Line plots side by side, one (title, x label, y label with its unit, series) per panel, as a PNG: every curve
    of the project."""
    fig, axes = figure(1, len(panels), figsize=(width * len(panels), 3.6), squeeze=False)
    for ax, (title, xlabel, ylabel, series) in zip(axes[0], panels):
        for label, points in series.items():
            if points:
                ax.plot(*zip(*points), marker="o", markersize=2, label=label)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def plot_lines(path: Path, title: str, xlabel: str, ylabel: str, series: Series) -> Path:
    return plot_panels(path, [(title, xlabel, ylabel, series)])


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
    return str(value).replace("|", "\\|").replace("\n", " ")  # a literal | (as in <|eos|>) must not split the cell


# ------------------------------------------------------------------ the pipeline report (`make demo`)

def accuracy_rows(metrics: dict[str, dict]) -> tuple[list[dict], list[dict]]:
    """Rows of the two accuracy tables (per stage and split; per stage, split and language), or none without a
    checker (real data)."""
    found = {k: v for stage in ("sft", "sft_scratch", "ppo") for k, v in metrics.get(stage, {}).get("accuracy",
                                                                                                    {}).items()}
    overall, by_language = [], []
    for model, splits in found.items():
        for split, s in splits.items():
            overall.append({"model": model, "questions": f"{split} ({s['n']})", "greedy exact": s["exact"],
                            "sampled exact (τ = 1)": s["sampled"], "right fact first": s["right_fact"],
                            "one sentence": s["one_sentence"], "stops at eos": s["stops_at_eos"]})
            by_language.append({"model": model, "questions": split, "greedy en": s["exact_en"],
                                "greedy ko": s["exact_ko"], "sampled en": s["sampled_en"],
                                "sampled ko": s["sampled_ko"]})
    return overall, by_language


# ------------------------------------------------------------------ every number next to its baseline


def verdict(beats: bool | None) -> str:
    return "not measured" if beats is None else "yes" if beats else "**no**"


def baseline_rows(metrics: dict[str, dict]) -> list[dict]:
    """Per stage: what was measured, the baseline it has to beat (same data), and whether it does."""
    rows = []
    base = metrics["base"]
    if "baseline_bigram_bpb" in base:
        rows.append({"stage": "pretraining", "measure": "validation bits per byte",
                     "value": base.get("val_bpb", base["val_bpb_last"]),
                     "baseline": f"bigram table {base['baseline_bigram_bpb']:.3f} (unigram "
                                 f"{base['baseline_unigram_bpb']:.3f}), same tokens",
                     "beats baseline": verdict(base.get("beats_baseline"))})
    scratch = metrics.get("sft_scratch", {})
    rows.append({"stage": "SFT", "measure": "held-out response loss", "value": metrics["sft"].get("eval_loss"),
                 "baseline": f"same SFT without pretraining {scratch['eval_loss']:.3f}" if scratch else "—",
                 "beats baseline": verdict(metrics["sft"]["eval_loss"] < scratch["eval_loss"] if scratch else None)})
    reward = metrics.get("reward", {})
    if "skipped" in reward:
        rows.append({"stage": "reward model", "measure": "skipped", "value": "—", "baseline": reward["skipped"],
                     "beats baseline": "—"})
    elif "eval_pairs" in reward:  # without held-out pairs there is no accuracy to set beside chance
        # A stage reused from a run before the length rule was measured has no figure for it.
        length = (f"; the {reward['length_rule_prefers']} reply always: {reward['length_rule_accuracy']:.3f}"
                  if reward.get("length_rule_accuracy") is not None else "")
        rows.append({"stage": "reward model", "measure": f"held-out pairwise accuracy ({reward['eval_pairs']} pairs)",
                     "value": f"{reward['pairwise_accuracy']:.3f} ± {reward['standard_error']:.3f}",
                     "baseline": f"chance 0.5 (a coin reaches {reward['chance_bound']:.3f} at 95 %){length}",
                     "beats baseline": verdict(reward["beats_baseline"])})
    ppo = metrics.get("ppo", {})
    if "skipped" in ppo and "skipped" not in reward:
        rows.append({"stage": "PPO", "measure": "skipped", "value": "—", "baseline": ppo["skipped"],
                     "beats baseline": "—"})
    elif "score_change_interval" in ppo:
        low, high = ppo["score_change_interval"]
        rows.append({"stage": "PPO", "measure": "RM score change, first → last quarter of the steps",
                     "value": f"{ppo['score_last'] - ppo['score_first']:+.2f} (95 % interval {low:+.2f} … {high:+.2f})",
                     "baseline": "no change (noise of the per-step batch means)",
                     "beats baseline": verdict(ppo["beats_baseline"])})
    return rows


def sft_sample_rows(out: Path) -> list[dict]:
    """Held-out SFT prompts with the replies after pretraining + SFT and after SFT alone (same prompts, greedy)."""
    read = lambda name: json.loads((out / name / "samples.json").read_text()) \
        if (out / name / "samples.json").exists() else []
    pretrained, scratch = read("sft"), read("sft_scratch")
    rows = []
    for i, sample in enumerate(pretrained):
        row = {"held-out prompt": sample["prompt"][:200], "pretraining + SFT": sample["answer"][:200]}
        if i < len(scratch):
            row["SFT alone"] = scratch[i]["answer"][:200]
        rows.append(row)
    return rows


@torch.no_grad()
def chat_samples(model, tokenizer, questions: tuple[str, ...] = ("What is the capital of Korea?",
                                                                  "대한민국의 수도는 어디입니까?", "What is 3 plus 4?"),
                 system_prompt: str | None = None) -> list[dict]:
    """Low temperature for facts, high for variety: distinct answers over 10 samples at τ = 0.2 vs 1.0."""
    rows = []
    for question in questions:
        prompt = ([{"role": "system", "content": system_prompt}] if system_prompt else []) + [
            {"role": "user", "content": question}]
        row = {"question": question}
        for tau in (0.2, 1.0):
            answers = complete(model, tokenizer, [prompt] * 10, 24, seed=0, do_sample=True, temperature=tau,
                               top_p=1.0, top_k=0)
            row[f"τ={tau}: first answer"] = answers[0]
            row[f"τ={tau}: distinct of 10"] = len(set(answers))
        rows.append(row)
    return rows


def write_report(out: Path, data_name: str, metrics: dict[str, dict],
                 questions: tuple[str, ...] = ("What is the capital of Korea?", "대한민국의 수도는 어디입니까?",
                                               "What is 3 plus 4?")) -> Path:
    """runs/<name>/report.md: every figure beside its baseline (also in summary.json), a table per stage, the
    accuracy tables (world data) or held-out samples (real data), plots, and replies of the final model."""
    from transformers import AutoModelForCausalLM

    from .loading import load_model_and_tokenizer

    pics = out / "plots"
    pics.mkdir(parents=True, exist_ok=True)
    ran = [name for name in metrics if "skipped" not in metrics[name]]
    final = out / ("ppo" if "ppo" in ran else "sft")
    verdicts = baseline_rows(metrics)
    figures = {name: {k: v for k, v in stage.items() if not k.endswith("curve")} for name, stage in metrics.items()}
    write_json(out / "summary.json", {"data": data_name, "final_model": final.name, "baselines": verdicts,
                                      "stages": figures})  # every figure README quotes
    tokenizer, model = load_model_and_tokenizer(AutoModelForCausalLM, final)
    model.eval()
    plot_position_encoding(pics / "position_encoding.png", 64, model.config.hidden_size,
                           model.config.sinusoidal_base)
    plot_attention(model, tokenizer, "The capital of Korea is Seoul. 3 plus 4 is 7.", pics / "attention.png")
    plot_sft_loss_mask(tokenizer, [{"role": "user", "content": "What is the capital of France?"},
                                   {"role": "assistant", "content": "The capital of France is Paris."}],
                       pics / "sft_loss_mask.png")
    plot_lines(pics / "pretrain_bpb.png", "Pretraining: validation bits per byte", "step", "bits per byte",
               {"val bpb": metrics["base"]["bpb_curve"]})
    plot_lines(pics / "sft_eval_loss.png", "SFT: held-out loss (response tokens)", "step", "nats per token",
               {"after pretraining": metrics["sft"]["eval_loss_curve"],
                **({"without pretraining": metrics["sft_scratch"]["eval_loss_curve"]} if "sft_scratch" in ran else {})})
    if "ppo" in ran:
        plot_lines(pics / "ppo_reward_kl.png", "PPO: reward model score and KL to the SFT model", "PPO step",
                   "score; KL in nats (k1: a batch's mean can dip below 0)",
                   {"score": metrics["ppo"]["score_curve"], "KL (nats)": metrics["ppo"]["kl_curve"]})
    samples = sft_sample_rows(out) if "accuracy" not in metrics["sft"] else []
    overall, by_language = accuracy_rows(metrics)
    recall = metrics["sft"].get("fact_recall_base") or {}
    recall = ", ".join(f"{split} {value:.2f}" for split, value in recall.items())

    def stage_table(name: str, keys: list[str]) -> str:
        stage = metrics.get(name, {"skipped": "not run"})
        if "skipped" in stage:
            return f"Skipped: {stage['skipped']}"
        return markdown_table([{k: stage.get(k) for k in keys}])

    evaluated = {model: tasks for model, tasks in metrics.get("lm_eval", {}).items() if isinstance(tasks, dict)}
    lm_eval = markdown_table([{"model": model, **row} for model, tasks in evaluated.items()
                              for row in lm_eval_rows(tasks)])
    text = render_template("pipeline_report.md.j2", trim_blocks=True, data_name=data_name, ran=ran, metrics=metrics,
                           verdicts=verdicts, samples=samples, overall=overall, by_language=by_language,
                           recall=recall, final=final.name, chat=chat_samples(model, tokenizer, questions),
                           table=markdown_table, stage_table=stage_table,
                           lm_eval=lm_eval)
    path = out / "report.md"
    path.write_text(text, encoding="utf-8")
    return path


# ------------------------------------------------------------------ the three Transformers (`make demo-transformers`)

CJK_FONTS = ("Noto Sans CJK KR", "Noto Sans KR", "NanumGothic", "Malgun Gothic", "AppleGothic", "UnDotum")


def korean_font() -> str | None:
    """A font that draws Hangul, if this machine has one (matplotlib ships none)."""
    from matplotlib import font_manager

    names = {f.name for f in font_manager.fontManager.ttflist}
    return next((name for name in CJK_FONTS if name in names), None)


def plot_cross_attention(model, tokenizer, source: str, path: Path, layer: int = -1) -> tuple[Path, list[str]]:
    """The translation's cross-attention, softmax(QKᵀ/√d_k) with Q from the target and K from the source (one layer,
    mean over heads): which source token each target token reads, Bahdanau et al.'s alignment picture. Without a
    Hangul font the target axis shows token numbers; the returned list gives their text."""
    previous = model.config._attn_implementation
    model.set_attn_implementation("eager")
    ids = tokenizer(source, return_tensors="pt").input_ids.to(model.device)
    with torch.no_grad():
        generated = model.generate(input_ids=ids, max_new_tokens=48, do_sample=False)
        weights = model(input_ids=ids, decoder_input_ids=generated[:, :-1], output_attentions=True
                        ).cross_attentions[layer][0].mean(0).float().cpu()  # (T, L)
    model.set_attn_implementation(previous)
    source_tokens = [tokenizer.decode([t]) for t in ids[0]]
    target_tokens = [tokenizer.decode([t]) for t in generated[0, 1:]]  # what each row produced
    font = korean_font()
    fig, ax = figure(figsize=(6, 5))
    image = ax.imshow(weights.numpy(), cmap="viridis", aspect="auto")
    fig.colorbar(image, label="attention weight (each row sums to 1)")
    ax.set_xticks(range(len(source_tokens)), source_tokens, rotation=90, fontsize=8)
    labels = target_tokens if font else [str(i) for i in range(len(target_tokens))]
    ax.set_yticks(range(len(labels)), labels, fontsize=8, **({"fontname": font} if font else {}))
    ax.set_xlabel("source token (encoder, K/V)")
    ax.set_ylabel("target token produced (decoder, Q)")
    ax.set_title(f"Cross-attention, decoder layer {layer % model.config.num_hidden_layers}, mean over heads")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path, target_tokens


def write_transformers_report(out: Path, metrics: dict[str, dict]) -> Path:
    """runs/transformers/report.md: the GPT vs BERT slide, the translation model, the lecture's shapes table."""
    gpt, bert, slide, translation = metrics["gpt"], metrics["bert"], metrics["slide"], metrics["translate"]
    shapes = [{**r, "shape": "(" + ", ".join(map(str, r["shape"])) + ")"} for r in translation["shapes"]]
    example = translation["shapes_example"]
    targets = translation.get("cross_attention_tokens", [])
    samples = [{k: r[k] for k in ("source", "target", "translation")} for r in translation["samples"]]
    text = render_template("transformers_report.md.j2", trim_blocks=True, gpt=gpt, bert=bert, slide=slide,
                           translation=translation, samples=samples, shapes=shapes, example=example,
                           targets=", ".join(f"{i}: {t!r}" for i, t in enumerate(targets)), table=markdown_table,
                           fmt=_fmt)
    path = out / "report.md"
    path.write_text(text, encoding="utf-8")
    return path
