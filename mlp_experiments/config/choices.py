"""The values a config key may take where there is a fixed list: Hydra names them in its message
when a value is not one of them."""

from enum import StrEnum


class Device(StrEnum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class Loader(StrEnum):
    device = "device"  # decoded once, batched on the training device
    torch = "torch"  # the notes' DataLoader + ToTensor, one PIL image at a time


class DatasetName(StrEnum):
    fashion_mnist = "fashion_mnist"
    mnist = "mnist"
    synthetic = "synthetic"
    regression = "regression"


class Normalize(StrEnum):
    none = "none"  # pixels in [0, 1], as ToTensor gives them
    mnist = "mnist"  # (x - 0.1307) / 0.3081, the MNIST statistics note 003 uses
    computed = "computed"  # mean and std of the training images


class Activation(StrEnum):
    relu = "relu"
    sigmoid = "sigmoid"
    tanh = "tanh"
    leaky_relu = "leaky_relu"
    prelu = "prelu"
    softplus = "softplus"
    elu = "elu"
    gelu = "gelu"


class Init(StrEnum):
    default = "default"  # whatever torch.nn.Linear does
    normal = "normal"  # N(0, init_std), the notes' choice
    xavier_normal = "xavier_normal"
    xavier_uniform = "xavier_uniform"
    kaiming_normal = "kaiming_normal"
    kaiming_uniform = "kaiming_uniform"


class BiasInit(StrEnum):
    default = "default"  # torch.nn.Linear's own
    zeros = "zeros"
    normal = "normal"  # N(0, init_std) like the weights (note 000's concise MLP)


class DropoutImpl(StrEnum):
    nn = "nn"  # torch.nn.Dropout
    scratch = "scratch"  # the notes' mask = rand > p; x * mask / (1 - p)


class Reduction(StrEnum):
    mean = "mean"
    sum = "sum"


class Precision(StrEnum):
    fp32 = "fp32"
    bf16 = "bf16"  # autocast of the forward pass
