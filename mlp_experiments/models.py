"""The networks of the notes, built from config by `hydra.utils.instantiate`."""

from __future__ import annotations

from torch import nn

ACTIVATIONS = {
    "relu": nn.ReLU,
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "leaky_relu": nn.LeakyReLU,
    "prelu": nn.PReLU,
    "softplus": nn.Softplus,
    "elu": nn.ELU,
    "gelu": nn.GELU,
}

WEIGHT_INITS = {
    "xavier_normal": nn.init.xavier_normal_,
    "xavier_uniform": nn.init.xavier_uniform_,
    "kaiming_normal": lambda weight: nn.init.kaiming_normal_(weight, nonlinearity="relu"),
    "kaiming_uniform": lambda weight: nn.init.kaiming_uniform_(weight, nonlinearity="relu"),
}


def init_linear(layer: nn.Linear, init: str, std: float, zero_bias: bool) -> None:
    """`normal` draws every parameter, bias included, from N(0, std) as note 000 does."""
    if init == "normal":
        nn.init.normal_(layer.weight, mean=0.0, std=std)
        if not zero_bias:
            nn.init.normal_(layer.bias, mean=0.0, std=std)
    elif init != "default":
        WEIGHT_INITS[init](layer.weight)
    if zero_bias:
        nn.init.zeros_(layer.bias)


class MLP(nn.Sequential):
    """Flatten, then Linear + activation (+ dropout) per hidden size, then a Linear to the
    classes: `MLP(784, 10, hidden_sizes=[256])` is the notes' concise 784-256-10 network."""

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        hidden_sizes: list[int],
        activation: str = "relu",
        dropout: float = 0.0,
        init: str = "default",
        init_std: float = 0.01,
        zero_bias: bool = False,
    ):
        layers: list[nn.Module] = [nn.Flatten()]
        widths = [in_features, *hidden_sizes]
        for width_in, width_out in zip(widths, widths[1:], strict=False):
            layers += [nn.Linear(width_in, width_out), ACTIVATIONS[activation]()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
        layers.append(nn.Linear(widths[-1], num_classes))
        super().__init__(*layers)
        for layer in self.modules():
            if isinstance(layer, nn.Linear):
                init_linear(layer, init, init_std, zero_bias)


def count_parameters(model: nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters())


def parameter_table(model: nn.Module) -> str:
    """The per-layer parameter summary the notes print, as a Markdown table."""
    rows = ["| parameter | shape | count |", "|---|---|---|"]
    for name, parameter in model.named_parameters():
        rows.append(f"| {name} | {tuple(parameter.shape)} | {parameter.numel():,} |")
    total = count_parameters(model)
    rows.append(f"| **total** | | **{total:,}** |")
    return "\n".join(rows) + "\n"
