"""Every plot names its axes with their units, and every heatmap has a colour bar that says what its colours mean."""

from matplotlib.figure import Figure

from hf_gpt.ppo import plot_ppo_curves
from hf_gpt.pretrain import plot_curves
from hf_gpt.report import plot_attention, plot_position_encoding


def test_every_plot_names_its_axes_and_colour_bars(tmp_path, monkeypatch, tiny_model, tokenizer):
    drawn = []
    monkeypatch.setattr(Figure, "savefig", lambda self, *args, **kwargs: drawn.append(self))
    plot_curves([{"step": 1, "loss": 3.0}, {"step": 1, "eval_loss": 3.1, "eval_bpb": 1.2}], tmp_path / "a.png")
    plot_ppo_curves([{"step": 1, "objective/scores": 0.1, "objective/rlhf_reward": 0.0, "objective/kl": -0.01}],
                    tmp_path / "b.png")
    plot_position_encoding(tmp_path / "c.png", 16, 8)
    model = tiny_model(vocab_size=len(tokenizer))
    plot_attention(model, tokenizer, "The capital of Korea is Seoul.", tmp_path / "d.png")
    curves, ppo, encoding, attention = drawn
    for fig in (curves, ppo):
        assert all(ax.get_xlabel() and ax.get_ylabel() for ax in fig.axes)
    assert "below 0" in ppo.axes[1].get_ylabel()  # the k1 estimate's dips are explained
    for fig in (encoding, attention):
        main, colour_bar = fig.axes
        assert main.get_xlabel() and main.get_ylabel() and colour_bar.get_ylabel()
