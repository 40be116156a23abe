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


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("path", ["fused", "plain", "factored"])
def test_cosine_is_scale_free_down_to_tiny_gradients(dtype, path):
    # A fitted model's or one deep block's gradient has norms near 1e-8: |d| |o| ~ 1e-16. A fixed
    # 1e-12 floor on the denominator pinned the distance at 1 with a zero gradient there.
    dummy = [t.to(dtype).detach() for t in _layers(0, False)]
    observed = [t.to(dtype) for t in _layers(1, False)]

    def value_and_grad(scale: float):
        d = [(t * scale).requires_grad_(True) for t in dummy]
        o = [t * scale for t in observed]
        if path == "plain":
            v = _plain_cosine(d, o, [1.0] * 3)
        elif path == "factored":
            from gradleak.attacks.lowrank import LowRankGradient

            g = torch.Generator().manual_seed(3)
            u, w = torch.randn(2, 6, generator=g, dtype=dtype), torch.randn(2, 5, generator=g, dtype=dtype)
            lr = LowRankGradient(u * scale ** 0.5, w * scale ** 0.5)
            d[0] = lr.dense().detach().requires_grad_(True)
            v = cosine_distance([lr, *d[1:]], o)
            v_dense = cosine_distance(d, o)
            assert float(v) == pytest.approx(float(v_dense), rel=1e-4)
        else:
            v = cosine_distance(d, o)
        grads = torch.autograd.grad(v, d[1:])
        return float(v), [g * scale for g in grads]  # d(cos)/d(d) scales as 1/scale

    v1, g1 = value_and_grad(1.0)
    v_tiny, g_tiny = value_and_grad(1e-8)
    assert 0.0 < v1 < 2.0
    assert v_tiny == pytest.approx(v1, rel=1e-4)
    for a, b in zip(g_tiny, g1, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-6)
