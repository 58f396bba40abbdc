"""The networks of the notes, built from config by `hydra.utils.instantiate`.

Every model is called as `Model(in_features, num_outputs, **config)`; `in_features` and
`num_outputs` come from the data (784 pixels and 10 classes for FashionMNIST).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from mlp_experiments.errors import UserError

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


def init_linear(layer: nn.Linear, init: str, std: float, bias_init: str) -> None:
    if init == "normal":
        nn.init.normal_(layer.weight, mean=0.0, std=std)
    elif init != "default":
        WEIGHT_INITS[init](layer.weight)
    if bias_init == "zeros":
        nn.init.zeros_(layer.bias)
    elif bias_init == "normal":
        nn.init.normal_(layer.bias, mean=0.0, std=std)


class ScratchDropout(nn.Module):
    """Note 004's hand-written dropout: keep with probability 1 - p and rescale by 1 / (1 - p),
    only in training, so the expectation of every unit is unchanged."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:  # dropout_rates keeps p below 1
            return x
        mask = (torch.rand(x.shape, device=x.device) > self.p).float()
        return mask * x / (1.0 - self.p)


DROPOUTS = {"nn": nn.Dropout, "scratch": ScratchDropout}


def dropout_rates(dropout: float | list[float], layers: int) -> list[float]:
    rates = [dropout] * layers if isinstance(dropout, int | float) else list(dropout)
    if len(rates) != layers or not all(0 <= rate < 1 for rate in rates):
        raise UserError(
            f"model.dropout={dropout} must be one rate in [0, 1) or one per hidden layer "
            f"({layers} here)."
        )
    return rates


class MLP(nn.Sequential):
    """Flatten, then Linear + activation (+ dropout) per hidden size, then a Linear to the
    outputs: `MLP(784, 10, hidden_sizes=[256])` is the notes' concise 784-256-10 network."""

    def __init__(
        self,
        in_features: int,
        num_outputs: int,
        hidden_sizes: list[int],
        activation: str = "relu",
        dropout: float | list[float] = 0.0,
        dropout_impl: str = "nn",
        init: str = "default",
        init_std: float = 0.01,
        bias_init: str = "default",
    ):
        layers: list[nn.Module] = [nn.Flatten()]
        widths = [in_features, *hidden_sizes]
        rates = dropout_rates(dropout, len(hidden_sizes))
        for width_in, width_out, rate in zip(widths, widths[1:], rates, strict=False):
            layers += [nn.Linear(width_in, width_out), ACTIVATIONS[activation]()]
            if rate > 0:
                layers.append(DROPOUTS[dropout_impl](rate))
        layers.append(nn.Linear(widths[-1], num_outputs))
        super().__init__(*layers)
        for layer in self.modules():
            if isinstance(layer, nn.Linear):
                init_linear(layer, init, init_std, bias_init)


def scratch_relu(x: torch.Tensor) -> torch.Tensor:
    return torch.max(x, torch.zeros_like(x))


def scratch_softmax(x: torch.Tensor) -> torch.Tensor:
    exp = x.exp()
    return exp / exp.sum(dim=1, keepdim=True)


class ScratchMLP(nn.Module):
    """Note 000 from scratch: raw weight tensors W ~ N(0, init_std) and zero biases, the
    hand-written relu between layers and the hand-written softmax at the end (it returns
    probabilities, which loss=scratch_cross_entropy takes)."""

    def __init__(self, in_features: int, num_outputs: int, hidden_sizes: list[int],
                 init_std: float = 0.01):
        super().__init__()
        widths = [in_features, *hidden_sizes, num_outputs]
        self.weights = nn.ParameterList(
            nn.Parameter(torch.randn(width_in, width_out) * init_std)
            for width_in, width_out in zip(widths, widths[1:], strict=False)
        )
        self.biases = nn.ParameterList(nn.Parameter(torch.zeros(width)) for width in widths[1:])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.reshape(x.shape[0], -1)
        for index, (weight, bias) in enumerate(zip(self.weights, self.biases, strict=True)):
            h = h @ weight + bias
            if index < len(self.weights) - 1:
                h = scratch_relu(h)
        return scratch_softmax(h)


class ModelDemo(nn.Module):
    """Note 001's demo: Linear(3,3) xavier_normal + sigmoid, Linear(3,2) kaiming_normal + relu,
    Linear(2,2) + softmax; zero biases; 26 parameters."""

    def __init__(self, in_features: int = 3, num_outputs: int = 2):
        super().__init__()
        if (in_features, num_outputs) != (3, 2):
            raise UserError(
                f"model=model_demo is 3 inputs -> 2 outputs, the data gives {in_features} -> "
                f"{num_outputs}: use data=synthetic data.features=3 data.num_classes=2 "
                f"(or experiment=model_demo)."
            )
        self.linear1 = nn.Linear(3, 3)
        nn.init.xavier_normal_(self.linear1.weight)
        nn.init.zeros_(self.linear1.bias)
        self.linear2 = nn.Linear(3, 2)
        nn.init.kaiming_normal_(self.linear2.weight, nonlinearity="relu")
        nn.init.zeros_(self.linear2.bias)
        self.out = nn.Linear(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.sigmoid(self.linear1(x))
        x = torch.relu(self.linear2(x))
        return torch.softmax(self.out(x), dim=-1)


class CNN(nn.Sequential):
    """Note 003's network: two 5x5 convolutions with max-pooling, then one linear layer."""

    def __init__(self, in_features: int = 784, num_outputs: int = 10):
        super().__init__(
            nn.Conv2d(1, 10, kernel_size=5), nn.MaxPool2d(2), nn.ReLU(),
            nn.Conv2d(10, 20, kernel_size=5), nn.MaxPool2d(2), nn.ReLU(),
            nn.Flatten(), nn.Linear(320, num_outputs),
        )


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


class ServingModel(nn.Module):
    """What the logged MLflow model serves: raw inputs in, probabilities (or values) out.

    Images come as float pixel values in [0, 255] (N x 28 x 28) and get the training run's
    scaling and normalisation; feature vectors pass as they are. `output` says what the wrapped
    model returns: logits (softmax applied), a binary logit (two class probabilities), or
    probabilities and values (returned as they are)."""

    def __init__(self, model: nn.Module, images: bool,
                 normalization: tuple[float, float] | None, output: str):
        super().__init__()
        self.model, self.images, self.output = model, images, output
        self.normalization = normalization

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if self.images:
            inputs = inputs.unsqueeze(1) / 255
            if self.normalization:
                inputs = inputs.sub(self.normalization[0]).div(self.normalization[1])
        outputs = self.model(inputs)
        if self.output == "logits":
            return outputs.softmax(dim=1)
        if self.output == "binary":
            positive = torch.sigmoid(outputs)
            return torch.cat([1 - positive, positive], dim=1)
        return outputs


def save_served_model(model, dataset, output: str, folder: Path) -> None:
    """The served model (a ServingModel) saved as an MLflow PyTorch model with its signature and
    input example, into `folder` (the run's journal folder, whence its sender logs it)."""
    import shutil

    import mlflow

    test_inputs = dataset.test[0]
    served = ServingModel(model, test_inputs.dtype == torch.uint8, dataset.normalization, output)
    example = test_inputs[:4].float()
    with torch.no_grad():
        predicted = served(example).numpy()
    shutil.rmtree(folder, ignore_errors=True)  # a resumed run's earlier try
    mlflow.pytorch.save_model(
        served, str(folder), signature=mlflow.models.infer_signature(example.numpy(), predicted),
        input_example=example.numpy(),
        pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"])
    # MLflow exports the graph with its weights on the CPU, and its loader, which cannot move
    # them, picks a GPU wherever there is one and refuses to load: the model says where it runs.
    # save_model writes `device: None` with no argument to set it, hence the MLmodel rewritten.
    saved = mlflow.models.Model.load(str(folder))
    saved.flavors[mlflow.pyfunc.FLAVOR_NAME][mlflow.pyfunc.MODEL_CONFIG]["device"] = "cpu"
    saved.save(str(folder / "MLmodel"))
