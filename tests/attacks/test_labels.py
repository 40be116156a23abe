import pytest
import torch

from gradleak.attacks.labels import infer_labels
from gradleak.config import ClientConfig, ModelConfig
from gradleak.errors import GradleakError
from gradleak.fl.client import ClientSetup, client_update
from gradleak.metrics import label_accuracy
from gradleak.models import build_model


def _model(name, seed):
    torch.manual_seed(seed)
    return build_model(ModelConfig(name=name, width=8, hidden=[64], norm="none"),
                       num_classes=10, channels=3, resolution=16, mean=(0.5,) * 3,
                       std=(0.25,) * 3)


@pytest.mark.parametrize("protocol", ["fedsgd", "fedavg"])
@pytest.mark.parametrize("name", ["convnet", "mlp"])
def test_idlg_single_sample_always_right(name, protocol):
    for seed in range(3):
        model = _model(name, seed)
        x = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(seed))
        for label in range(10):
            y = torch.tensor([label])
            setup = ClientSetup.from_config(ClientConfig(protocol=protocol, lr=0.01), 1)
            update = client_update(model, x, y, setup, seed=seed)
            assert infer_labels("idlg", model, update.gradient_direction(), 1) == [label]


def test_yin_distinct_labels_exact():
    for seed in range(3):
        model = _model("convnet", seed)
        g = torch.Generator().manual_seed(seed)
        y = torch.randperm(10, generator=g)[:6]
        x = torch.rand(6, 3, 16, 16, generator=g)
        update = client_update(model, x, y, ClientSetup.from_config(ClientConfig(), 6), seed=0)
        inferred = infer_labels("yin", model, update.gradient_direction(), 6)
        assert label_accuracy(inferred, y.tolist()) == 1.0


def test_rules_refuse_what_they_cannot_do():
    model = _model("mlp", 0)
    direction = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    with pytest.raises(GradleakError, match="idlg infers the label of one sample"):
        infer_labels("idlg", model, direction, 2)
    with pytest.raises(GradleakError, match="exceeds the 10 classes"):
        infer_labels("yin", model, direction, 11)
    with pytest.raises(GradleakError, match="unknown label rule"):
        infer_labels("oracle", model, direction, 1)


def test_idlg_reads_the_bias_when_the_features_can_be_negative():
    # tanh features summing to < 0 (a BERT classifier's pooled output can): the true class row
    # of dL/dW then has a positive sum and every other row a negative one, so the weight rule
    # picks a wrong class; the bias gradient p - y is negative at the true class only.
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(2, 4), torch.nn.Tanh(), torch.nn.Linear(4, 3))
    with torch.no_grad():
        net[0].weight.fill_(0.0)
        net[0].bias.fill_(-2.0)  # every feature tanh(-2) < 0
    x, y = torch.randn(1, 2), torch.tensor([1])
    loss = torch.nn.functional.cross_entropy(net(x), y)
    names = [n for n, _ in net.named_parameters()]
    direction = dict(zip(names, torch.autograd.grad(loss, list(net.parameters())), strict=True))
    assert infer_labels("idlg", net, direction, 1) == [1]
    no_bias = {k: v for k, v in direction.items() if k != "2.bias"}
    assert infer_labels("idlg", net, no_bias, 1) != [1]  # the weight rule alone is fooled
