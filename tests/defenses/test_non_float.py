"""Defenses leave integer/boolean tensors (a state_dict's ``num_batches_tracked``) untouched."""

from __future__ import annotations

import pytest
import torch

from gradleak.defenses import DEFENSES, is_float, map_tensors, needs_context
from gradleak.update import SharedUpdate

PARAMS = {
    "qsgd": {"bits": 2},
    "topk": {"sparsity": 0.5},
    "clip": {"bound": 0.05},
    "clip_norm": {"clip_norm": 0.1},
    "gaussian": {"noise_multiplier": 0.1, "clip_norm": 1.0},
    "signsgd": {"scale_sign": True},
}


def _floats() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return {"conv.weight": torch.randn(4, 3, 3, 3, generator=gen),
            "conv.bias": torch.randn(4, generator=gen),
            "fc.weight": torch.randn(2, 4, generator=gen, dtype=torch.float64)}


def _mixed() -> dict[str, torch.Tensor]:
    floats = _floats()
    # Integer and boolean entries interleaved with the float ones, as in a real state_dict.
    return {"conv.weight": floats["conv.weight"],
            "bn.num_batches_tracked": torch.tensor(7, dtype=torch.int64),
            "conv.bias": floats["conv.bias"],
            "mask": torch.tensor([True, False, True]),
            "fc.weight": floats["fc.weight"],
            "steps": torch.arange(5, dtype=torch.int32)}


# gradleak's own post-processing defenses (plug-ins registered by other tests are not ours to
# check; training-time ones read the client's round and touch one named tensor: test_soteria.py).
BUILTIN = sorted(n for n in DEFENSES.names() if DEFENSES.get(n).__module__.startswith("gradleak.")
                 and not needs_context(DEFENSES.get(n)))


@pytest.mark.parametrize("name", BUILTIN)
@pytest.mark.parametrize("per_tensor", [True, False])
def test_defense_passes_non_float_tensors_and_treats_floats_as_without_them(name, per_tensor):
    fn = DEFENSES.get(name)
    params = dict(PARAMS.get(name, {}))
    if name in ("qsgd", "topk", "signsgd"):
        params["per_tensor"] = per_tensor
    mixed = SharedUpdate("model_delta", _mixed(), 3)
    pure = SharedUpdate("model_delta", _floats(), 3)
    before = {n: t.clone() for n, t in mixed.tensors.items()}

    out = fn(mixed, generator=torch.Generator().manual_seed(5), **params)
    ref = fn(pure, generator=torch.Generator().manual_seed(5), **params)

    assert list(out.tensors) == list(mixed.tensors)  # order and names kept
    for n, t in mixed.tensors.items():
        assert torch.equal(t, before[n]) and t.dtype == before[n].dtype  # input not modified
        if not is_float(t):
            assert out.tensors[n].dtype == t.dtype and torch.equal(out.tensors[n], t)
        else:
            assert torch.allclose(out.tensors[n], ref.tensors[n], atol=0, rtol=0), n


def test_qsgd_on_a_state_dict_delta_with_num_batches_tracked_does_not_crash():
    # The reported crash: vector_norm of an int64 tensor.
    bn = torch.nn.BatchNorm2d(3)
    delta = {k: v - v for k, v in bn.state_dict().items()}
    delta["weight"] = torch.tensor([0.5, 0.0, 0.0])
    out = DEFENSES.get("qsgd")(SharedUpdate("model_delta", delta, 1),
                               generator=torch.Generator().manual_seed(0), bits=4)
    assert out.tensors["num_batches_tracked"].dtype == torch.int64
    assert torch.equal(out.tensors["weight"], delta["weight"])  # a one-hot tensor quantises exactly


def test_map_tensors_global_mode_with_only_integer_tensors_is_the_identity():
    update = SharedUpdate("model_delta", {"n": torch.tensor(3)}, 1)
    out = map_tensors(update, lambda v: v * 0, per_tensor=False)
    assert torch.equal(out.tensors["n"], torch.tensor(3))
