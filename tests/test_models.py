import torch

from mlp_experiments.models import MLP, count_parameters, parameter_table


def test_concise_mlp_has_the_notes_parameter_count():
    model = MLP(784, 10, hidden_sizes=[256])
    assert count_parameters(model) == 203_530  # 784*256 + 256 + 256*10 + 10
    assert model(torch.zeros(3, 1, 28, 28)).shape == (3, 10)
    assert "**203,530**" in parameter_table(model)


def test_hidden_sizes_activation_and_dropout_build_the_layers():
    model = MLP(784, 10, hidden_sizes=[512, 256, 128, 64], activation="tanh", dropout=0.5)
    linears = [m for m in model if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [
        (784, 512), (512, 256), (256, 128), (128, 64), (64, 10)
    ]
    assert sum(isinstance(m, torch.nn.Tanh) for m in model) == 4
    assert sum(isinstance(m, torch.nn.Dropout) for m in model) == 4


def test_normal_init_draws_weights_and_biases_with_the_given_std():
    torch.manual_seed(0)
    model = MLP(784, 10, hidden_sizes=[256], init="normal", init_std=0.01, bias_init="normal")
    first = model[1]
    assert abs(first.weight.std().item() - 0.01) < 0.0005
    assert abs(first.weight.mean().item()) < 0.0005
    assert 0.005 < first.bias.std().item() < 0.015  # note 000 draws biases too
    zero = MLP(784, 10, hidden_sizes=[256], init="normal", bias_init="zeros")
    assert torch.count_nonzero(zero[1].bias) == 0
