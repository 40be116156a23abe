"""GradAttack's attack on MixUp/InstaHide (gradleak.attacks.mix_decode)."""

from __future__ import annotations

import pytest
import torch

from gradleak import metrics
from gradleak.attacks.mix_decode import decode, mixing_matrix
from gradleak.config import load_config
from gradleak.errors import GradleakError
from gradleak.fl.mixing import draw_plan, encode
from gradleak.scenario import Scenario

MEAN = torch.tensor([0.4, 0.5, 0.6]).view(1, 3, 1, 1)
CASE = ["model.name=mlp", "data.resolution=16", "data.num_samples=4", "attack.tv=1e-4",
        "client.mix=mixup"]


def _images(n=4):
    return torch.rand(n, 3, 6, 6, generator=torch.Generator().manual_seed(0))


def test_the_mixing_matrix_maps_originals_to_their_mixup_encodings():
    x = _images()
    plan = draw_plan("mixup", 4, 4, 0.0, 0.65, (3, 6, 6), torch.Generator().manual_seed(1))
    matrix = mixing_matrix(plan)
    torch.testing.assert_close(matrix.sum(1), torch.ones(4, dtype=torch.float64))
    mixed = torch.einsum("nm,mchw->nchw", matrix.float(), x)
    torch.testing.assert_close(mixed, encode(x, plan, MEAN))


def test_exact_mixup_encodings_decode_to_the_originals():
    x = _images()
    plan = draw_plan("mixup", 4, 4, 0.0, 0.65, (3, 6, 6), torch.Generator().manual_seed(1))
    decoded = decode(encode(x, plan, MEAN), plan, MEAN)
    assert metrics.score(decoded[None], x)["psnr"] > 40


def test_the_instahide_decode_is_blind_to_the_signs_and_lowers_their_residual():
    x = _images()
    plan = draw_plan("instahide", 4, 4, 0.0, 0.65, (3, 6, 6), torch.Generator().manual_seed(1))
    encoded = encode(x, plan, MEAN)
    flipped = MEAN - (encoded - MEAN)  # the opposite signs: the same decode
    a, b = decode(encoded, plan.granted(), MEAN, steps=50), decode(flipped, plan.granted(), MEAN,
                                                                    steps=50)
    torch.testing.assert_close(a, b, atol=2e-3, rtol=0)  # float rounding of |E - m| only
    matrix = mixing_matrix(plan).float()

    def residual(p):
        return (((torch.einsum("nm,mchw->nchw", matrix, p) - MEAN).abs()
                 - (encoded - MEAN).abs()) ** 2).mean().item()

    assert residual(x) < 1e-10
    longer = decode(encoded, plan.granted(), MEAN, steps=300)
    assert residual(longer) < residual(decode(encoded, plan.granted(), MEAN, steps=0))
    assert float(longer.min()) >= 0 and float(longer.max()) <= 1


def _psnr(attack: str, seed: int) -> float:
    cfg = load_config(None, [*CASE, "attack.iterations=400", f"attack.name={attack}",
                             "threat.knows_mixing=true", f"seed={seed}"])
    return Scenario.from_config(cfg).run().result["metrics"]["psnr"]


def test_matching_through_the_plan_beats_the_non_adaptive_attack_on_mixup():
    # The non-adaptive attack recovers encodings dominated by one sample (~14 dB here); the
    # plan-aware attack matches the originals through L P.
    seeds = (1, 2)
    plain = sum(_psnr("ig", s) for s in seeds) / len(seeds)
    adaptive = sum(_psnr("mix-decode", s) for s in seeds) / len(seeds)
    assert adaptive > plain + 3, (plain, adaptive)


@pytest.mark.parametrize("extra, fragment", [
    (["client.mix=none", "threat.knows_mixing=true"], "needs the client's mixing plan"),
    (["threat.knows_mixing=false"], "mixing plan .*threat.knows_mixing=true"),
    (["client.protocol=fedavg", "threat.knows_mixing=true"], "inverts one FedSGD gradient"),
])
def test_the_attack_refuses_without_the_plan_or_on_fedavg(extra, fragment):
    cfg = load_config(None, [*CASE, "attack.iterations=2", "attack.name=mix-decode", *extra])
    with pytest.raises(GradleakError, match=fragment):
        Scenario.from_config(cfg).run()
