"""The fused gradient distances against a straightforward autograd reference."""

import pytest
import torch

from gradleak.attacks.losses import _plain_cosine, _plain_l2, cosine_distance, l2_distance


def _layers(seed: int, requires_grad: bool) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    shapes = [(6, 5), (6,), (3, 2, 3, 3)]
    return [torch.randn(s, generator=g, dtype=torch.float64).requires_grad_(requires_grad)
            for s in shapes]


@pytest.mark.parametrize("fused, plain", [(cosine_distance, _plain_cosine), (l2_distance, _plain_l2)])
@pytest.mark.parametrize("weights", [None, [1.0, 0.0, 2.5]])
def test_fused_distance_matches_the_reference_in_value_and_gradient(fused, plain, weights):
    dummy, observed = _layers(0, True), _layers(1, False)
    value = fused(dummy, observed, weights)
    grads = torch.autograd.grad(value, dummy)
    ref_dummy = [d.detach().clone().requires_grad_(True) for d in dummy]
    ref = plain(ref_dummy, observed, weights or [1.0] * 3)
    ref_grads = torch.autograd.grad(ref, ref_dummy)
    assert float(value) == pytest.approx(float(ref), rel=1e-12)
    for a, b in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_fused_distance_chains_through_create_graph_gradients():
    """The engine's use: the dummy list is itself a create_graph gradient of the images."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.Tanh(), torch.nn.Linear(4, 3)).double()
    params = list(net.parameters())
    x = torch.randn(2, 8, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 2])
    target = [g.detach() for g in torch.autograd.grad(
        torch.nn.functional.cross_entropy(net(torch.randn(2, 8, dtype=torch.float64)), y), params)]

    def image_grad(distance):
        dummy = torch.autograd.grad(torch.nn.functional.cross_entropy(net(x), y), params,
                                    create_graph=True)
        return torch.autograd.grad(distance(dummy, target), x)[0]

    torch.testing.assert_close(image_grad(cosine_distance),
                               image_grad(lambda d, o: _plain_cosine(d, o, [1.0] * len(d))))
    torch.testing.assert_close(image_grad(l2_distance),
                               image_grad(lambda d, o: _plain_l2(d, o, [1.0] * len(d))))


def test_second_derivative_is_refused_not_wrong():
    dummy, observed = _layers(0, True), _layers(1, False)
    (grad,) = torch.autograd.grad(cosine_distance(dummy, observed), dummy[0], create_graph=True)
    with pytest.raises(RuntimeError):
        torch.autograd.grad(grad.sum(), dummy[0])


def test_observed_side_with_grad_uses_the_reference_formula():
    dummy, observed = _layers(0, True), _layers(1, True)
    grads = torch.autograd.grad(cosine_distance(dummy, observed), observed)
    assert all(g.abs().sum() > 0 for g in grads)


def test_degenerate_inputs():
    zeros = [torch.zeros(3)]
    assert float(l2_distance(zeros, zeros)) == 0.0
    assert torch.isfinite(cosine_distance([torch.zeros(3, requires_grad=True)], [torch.ones(3)]))
    with pytest.raises(ValueError, match="equal, non-empty"):
        cosine_distance([torch.ones(2)], [])
