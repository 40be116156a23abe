"""Defenses (Sec. 6, App. C): each post-processing's contract, config binding and an end-to-end
check that a strong setting lowers the attack's PSNR."""

import json

import pytest
import torch

from gradleak.cli import main
from gradleak.config import DefenseConfig, load_config
from gradleak.defenses import DEFENSES, build_defense
from gradleak.defenses.clip_norm import total_norm
from gradleak.defenses.dpsgd import TRAINING_DEFENSES
from gradleak.defenses.qsgd import levels_for
from gradleak.defenses.topk import kept_count
from gradleak.errors import GradleakError
from gradleak.update import SharedUpdate

# Settings under which every defense visibly changes a standard-normal update.
STRONG = {
    "none": {},
    "qsgd": {"bits": 2},
    "signsgd": {},
    "topk": {"sparsity": 0.5},
    "clip": {"bound": 0.5},
    "clip_norm": {"clip_norm": 1.0},
    "gaussian": {"noise_multiplier": 0.1},
}


def _update(seed: int = 0, kind: str = "gradient", scale: float = 1.0) -> SharedUpdate:
    g = torch.Generator().manual_seed(seed)
    tensors = {"fc.weight": torch.randn(8, 6, generator=g) * scale,
               "fc.bias": torch.randn(8, generator=g) * scale,
               "out.weight": torch.randn(3, 8, generator=g) * scale}
    return SharedUpdate(kind, tensors, num_samples=5)


def _apply(name: str, update: SharedUpdate, seed: int = 1, **params) -> SharedUpdate:
    defense = build_defense(DefenseConfig(name=name, **{**STRONG[name], **params}))
    return defense(update, generator=torch.Generator().manual_seed(seed))


def test_every_defense_is_registered_with_a_summary():
    # Training defenses (DP-SGD) change the client's steps, not its update: tests/defenses/test_dpsgd.py;
    # those reading the client's round (model and inputs): test_soteria.py, test_outpost.py.
    assert set(DEFENSES.names()) == set(STRONG) | TRAINING_DEFENSES | {"soteria", "outpost"}
    for name in DEFENSES:
        assert (DEFENSES.get(name).__doc__ or "").strip().splitlines()[0]


# --- QSGD -----------------------------------------------------------------------------------


def test_qsgd_bits_to_levels():
    assert [levels_for(b) for b in (1, 2, 3, 4)] == [1, 3, 7, 15]
    assert levels_for(4, levels=5) == 5


def test_qsgd_is_unbiased():
    update, s, draws = _update(), 3, 2000
    g = torch.Generator().manual_seed(0)
    defense = build_defense(DefenseConfig(name="qsgd", bits=2))
    total = {n: torch.zeros_like(t) for n, t in update.tensors.items()}
    for _ in range(draws):
        for n, t in defense(update, generator=g).tensors.items():
            total[n] += t
    for n, t in update.tensors.items():
        # Each entry's rounding noise has std <= (||v|| / s) / 2: allow 6 standard errors.
        tol = 6 * torch.linalg.vector_norm(t) / (2 * s) / draws**0.5
        assert (total[n] / draws - t).abs().max() < tol, n


@pytest.mark.parametrize("params, s", [({"bits": 1}, 1), ({"bits": 2}, 3), ({"bits": 4}, 15),
                                       ({"levels": 5}, 5)])
def test_qsgd_has_at_most_s_plus_one_magnitudes_per_tensor(params, s):
    update = _update()
    out = _apply("qsgd", update, **params)
    for n, t in update.tensors.items():
        norm = torch.linalg.vector_norm(t)
        steps = out.tensors[n].abs() * s / norm
        assert torch.allclose(steps, steps.round(), atol=1e-4), n  # multiples of ||v|| / s
        assert len(steps.round().unique()) <= s + 1
        assert steps.max() <= s + 1e-4
        signs = torch.sign(out.tensors[n])
        assert torch.all((signs == 0) | (signs == torch.sign(t)))


def test_qsgd_zero_tensor_stays_zero():
    update = SharedUpdate("gradient", {"w": torch.zeros(4)}, 1)
    assert torch.equal(_apply("qsgd", update).tensors["w"], torch.zeros(4))


# --- signSGD --------------------------------------------------------------------------------


def test_signsgd_outputs_signs():
    update = _update()
    update.tensors["fc.bias"][0] = 0.0
    out = _apply("signsgd", update)
    for n, t in update.tensors.items():
        assert torch.equal(out.tensors[n], torch.sign(t))
    assert out.tensors["fc.bias"][0] == 0
    assert set(torch.cat([t.reshape(-1) for t in out.tensors.values()]).tolist()) <= {-1.0, 0.0, 1.0}


def test_signsgd_scaled_by_mean_magnitude():
    update = _update(scale=0.01)
    out = _apply("signsgd", update, scale_sign=True)
    for n, t in update.tensors.items():
        scale = t.abs().mean()
        torch.testing.assert_close(out.tensors[n].abs(), torch.full_like(t, float(scale)))
        assert torch.equal(torch.sign(out.tensors[n]), torch.sign(t))


# --- top-k ----------------------------------------------------------------------------------


@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.6, 0.9, 0.95, 1.0])
def test_topk_keeps_exactly_k_largest_per_tensor(sparsity):
    update = _update()
    out = _apply("topk", update, sparsity=sparsity)
    for n, t in update.tensors.items():
        o = out.tensors[n]
        k = kept_count(t.numel(), sparsity)
        kept = o != 0
        assert int(kept.sum()) == k, n
        assert torch.equal(o[kept], t[kept])  # survivors are untouched
        if 0 < k < t.numel():
            assert t[kept].abs().min() >= t[~kept].abs().max()


def test_topk_counts_of_the_paper_grid():
    assert [kept_count(100, p) for p in (0.6, 0.7, 0.8, 0.9, 0.95)] == [40, 30, 20, 10, 5]


def test_topk_global_keeps_k_over_the_whole_update():
    update = _update()
    out = _apply("topk", update, sparsity=0.75, per_tensor=False)
    flat_in = torch.cat([t.reshape(-1) for t in update.tensors.values()])
    flat_out = torch.cat([t.reshape(-1) for t in out.tensors.values()])
    k = kept_count(flat_in.numel(), 0.75)
    assert int((flat_out != 0).sum()) == k
    assert set(flat_out.abs().topk(k).values.tolist()) == set(flat_in.abs().topk(k).values.tolist())


def test_topk_breaks_ties_by_lowest_index():
    update = SharedUpdate("gradient", {"w": torch.tensor([1.0, -1.0, 1.0, -1.0, 0.5])}, 1)
    out = _apply("topk", update, sparsity=0.6)
    assert out.tensors["w"].tolist() == [1.0, -1.0, 0.0, 0.0, 0.0]


# --- clipping -------------------------------------------------------------------------------


def test_clip_bounds_values_and_leaves_inner_ones():
    update = _update()
    out = _apply("clip", update, bound=0.3)
    for n, t in update.tensors.items():
        o = out.tensors[n]
        assert o.abs().max() <= 0.3
        inside = t.abs() <= 0.3
        assert inside.any() and (~inside).any()
        assert torch.equal(o[inside], t[inside])
        assert torch.equal(o[~inside], 0.3 * torch.sign(t[~inside]))


def test_clip_norm_caps_the_total_norm():
    update = _update()
    assert total_norm(update) > 2.0
    out = _apply("clip_norm", update, clip_norm=2.0)
    assert total_norm(out) <= 2.0 + 1e-5
    assert total_norm(out) == pytest.approx(2.0, rel=1e-5)
    factor = 2.0 / total_norm(update)
    for n, t in update.tensors.items():  # one common factor: the direction is kept
        torch.testing.assert_close(out.tensors[n], t * factor)


def test_clip_norm_leaves_a_small_update_unchanged():
    update = _update(scale=0.01)
    out = _apply("clip_norm", update, clip_norm=10.0)
    for n, t in update.tensors.items():
        assert torch.equal(out.tensors[n], t)


# --- Gaussian -------------------------------------------------------------------------------


@pytest.mark.parametrize("params, sigma", [({"noise_multiplier": 0.2}, 0.2),
                                           ({"noise_multiplier": 0.5, "clip_norm": 3.0}, 1.5)])
def test_gaussian_noise_has_the_stated_std(params, sigma):
    g = torch.Generator().manual_seed(3)
    # Tiny entries so L2 clipping to C is a no-op and out - in is the noise alone.
    update = SharedUpdate("gradient", {"w": torch.rand(200, 500, generator=g) * 1e-5}, 1)
    out = _apply("gaussian", update, **params)
    noise = out.tensors["w"] - update.tensors["w"]
    assert float(noise.std()) == pytest.approx(sigma, rel=0.05)
    assert abs(float(noise.mean())) < 0.05 * sigma


def test_gaussian_with_clip_norm_clips_first():
    update = _update(scale=100.0)
    out = _apply("gaussian", update, noise_multiplier=0.0, clip_norm=1.0)
    assert total_norm(out) == pytest.approx(1.0, rel=1e-5)


def test_gaussian_is_reproducible_per_seed():
    update = _update()
    a, b, c = (_apply("gaussian", update, seed=s) for s in (7, 7, 8))
    for n in update.tensors:
        assert torch.equal(a.tensors[n], b.tensors[n])
        assert not torch.equal(a.tensors[n], c.tensors[n])


# --- common contract ------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(set(STRONG) - {"none"}))
def test_defense_changes_a_random_update_and_keeps_its_metadata(name):
    update = _update(kind="model_delta", scale=3.0)
    before = {n: t.clone() for n, t in update.tensors.items()}
    out = _apply(name, update)
    assert any(not torch.equal(out.tensors[n], t) for n, t in update.tensors.items())
    for n, t in update.tensors.items():  # the input is not mutated
        assert torch.equal(t, before[n])
        assert out.tensors[n].shape == t.shape and out.tensors[n].dtype == t.dtype
    assert out.kind == "model_delta" and out.num_samples == 5
    assert list(out.tensors) == list(update.tensors)


def test_none_returns_the_update_unchanged():
    update = _update()
    assert _apply("none", update) is update


def test_build_defense_binds_the_config():
    update = _update()
    half = build_defense(DefenseConfig(name="topk", sparsity=0.5))(update)
    most = build_defense(DefenseConfig(name="topk", sparsity=0.9))(update)
    w = update.tensors["fc.weight"]
    assert int((half.tensors["fc.weight"] != 0).sum()) == kept_count(w.numel(), 0.5) == 24
    assert int((most.tensors["fc.weight"] != 0).sum()) == kept_count(w.numel(), 0.9) == 5
    cfg = load_config(overrides=["defense.name=qsgd", "defense.levels=2"])
    out = build_defense(cfg.defense)(update, generator=torch.Generator().manual_seed(0))
    steps = out.tensors["fc.weight"].abs() * 2 / torch.linalg.vector_norm(w)
    assert set(steps.round().reshape(-1).tolist()) <= {0.0, 1.0, 2.0}


@pytest.mark.parametrize("cfg, fragment", [
    (DefenseConfig(name="topk", sparsity=1.5), "defense.sparsity: must be in [0, 1]"),
    (DefenseConfig(name="qsgd", bits=30), "defense.bits: must be an integer in [1, 24]"),
    (DefenseConfig(name="qsgd", levels=0), "defense.levels: must be an integer >= 1"),
    (DefenseConfig(name="clip", bound=0.0), "defense.bound: must be > 0"),
    (DefenseConfig(name="clip_norm"), "defense.clip_norm: must be a number > 0"),
    (DefenseConfig(name="gaussian", noise_multiplier=-1.0), "defense.noise_multiplier: must be >= 0"),
])
def test_bad_parameters_raise_one_line(cfg, fragment):
    with pytest.raises(GradleakError) as err:
        build_defense(cfg)(_update())
    assert fragment in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("override, fragment", [("defense.bits=0", "defense.bits: must be >= 1"),
                                                ("defense.sparsity=-0.1", "defense.sparsity")])
def test_bad_config_values_are_refused_when_set(override, fragment):
    with pytest.raises(GradleakError, match=fragment):
        load_config(overrides=[override])


# --- end to end -----------------------------------------------------------------------------

E2E = ["--quiet", "model.name=mlp", "model.hidden=[32]", "data.resolution=16",
       "attack.iterations=150", "seed=0"]


def _psnr(out, *overrides) -> float:
    assert main(["attack", "--out", str(out), *E2E, *overrides]) == 0
    return json.loads((out / "result.json").read_text())["metrics"]["psnr"]


@pytest.fixture(scope="module")
def undefended_psnr(tmp_path_factory) -> float:
    return _psnr(tmp_path_factory.mktemp("none"), "defense.name=none")


def test_cli_refuses_a_bad_sparsity(tmp_path, capsys):
    code = main(["attack", "--out", str(tmp_path), *E2E, "defense.name=topk", "defense.sparsity=1.5"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "defense.sparsity" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("overrides", [
    ["defense.name=signsgd"],
    ["defense.name=topk", "defense.sparsity=0.99"],
    ["defense.name=gaussian", "defense.noise_multiplier=1.0"],
    ["defense.name=qsgd", "defense.bits=1"],
])
def test_strong_defense_lowers_the_attack_psnr(tmp_path, undefended_psnr, overrides):
    # Measured at seed 0: none 31.1 dB; signsgd 12.0, topk 13.8, gaussian 8.2, qsgd 12.9.
    assert undefended_psnr > 25.0  # the MLP inversion is near exact without a defense
    assert _psnr(tmp_path, *overrides) < undefended_psnr - 10.0
