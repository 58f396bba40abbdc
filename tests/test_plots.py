import numpy as np
import pytest
import torch
from torch import nn

from mlp_experiments import plots
from mlp_experiments.models import ACTIVATIONS

EPOCHS = 200
CHECKED = (0, 49, 50, 100, 160, 199)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def rates_at(name: str) -> list[float]:
    rates = plots.learning_rates(name, EPOCHS)
    assert len(rates) == EPOCHS
    return [rates[epoch] for epoch in CHECKED]


def test_step_halves_every_50_epochs():
    expected = [0.1 * 0.5 ** (epoch // 50) for epoch in CHECKED]
    assert expected == pytest.approx([0.1, 0.1, 0.05, 0.025, 0.0125, 0.0125])
    assert rates_at("step") == pytest.approx(expected)


def test_multistep_halves_at_the_milestones():
    expected = [0.1 * 0.5 ** sum(epoch >= m for m in (50, 100, 160)) for epoch in CHECKED]
    assert expected == pytest.approx([0.1, 0.1, 0.05, 0.025, 0.0125, 0.0125])
    assert rates_at("multistep") == pytest.approx(expected)


def test_exponential_multiplies_by_0_9_per_epoch():
    assert rates_at("exponential") == pytest.approx([0.1 * 0.9**epoch for epoch in CHECKED])


def test_none_keeps_the_rate():
    assert plots.learning_rates("none", EPOCHS) == pytest.approx([0.1] * EPOCHS)


def test_cosine_anneals_to_zero_over_the_run():
    rates = plots.learning_rates("cosine", EPOCHS)
    assert rates[0] == pytest.approx(0.1)
    assert rates[EPOCHS // 2] == pytest.approx(0.05)
    assert rates[-1] == pytest.approx(0.0, abs=1e-4)


def test_every_scheduler_option_is_discovered():
    assert {"none", "step", "multistep", "exponential", "cosine"} <= set(plots.scheduler_names())


@pytest.mark.parametrize(
    ("module", "derivative"),
    [
        (nn.ReLU(), lambda x: (x > 0).astype(np.float32)),
        (nn.Sigmoid(), lambda x: (s := 1 / (1 + np.exp(-x))) * (1 - s)),
        (nn.Tanh(), lambda x: 1 - np.tanh(x) ** 2),
    ],
    ids=["relu", "sigmoid", "tanh"],
)
def test_activation_derivative_matches_closed_form(module, derivative):
    x = torch.linspace(-6, 6, 601)
    _, dy = plots.activation_curve(module, x)
    np.testing.assert_allclose(dy, derivative(x.numpy()), atol=1e-6)


def test_activation_curve_returns_the_function_values():
    x = torch.linspace(-6, 6, 601)
    y, _ = plots.activation_curve(nn.Tanh(), x)
    np.testing.assert_allclose(y, np.tanh(x.numpy()), atol=1e-6)


def test_activations_figure_has_one_panel_per_activation_and_the_step():
    figure = plots.activations_figure()
    visible = [axis for axis in figure.axes if axis.get_visible()]
    titles = [axis.get_title() for axis in visible]
    plots.plt.close(figure)
    assert len(visible) == len(ACTIVATIONS) + 1
    assert titles[: len(ACTIVATIONS)] == list(ACTIVATIONS)
    assert "step" in titles[-1]


def assert_png(path):
    content = path.read_bytes()
    assert content[:8] == PNG_SIGNATURE
    assert len(content) > 10_000


def test_main_activations_writes_a_png(tmp_path, capsys):
    plots.main(["plots.figure=activations", f"plots.out_dir={tmp_path}"])
    assert_png(tmp_path / "activations.png")
    assert str(tmp_path / "activations.png") in capsys.readouterr().out


def test_main_schedules_writes_a_png(tmp_path, capsys):
    plots.main(["plots.figure=schedules", f"plots.out_dir={tmp_path / 'figures'}",
                "plots.epochs=20"])
    assert_png(tmp_path / "figures" / "schedules.png")
    assert str(tmp_path / "figures" / "schedules.png") in capsys.readouterr().out
