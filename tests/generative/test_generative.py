"""GIA-L (gias, ggl), ROG and the DCGAN prior: generator, train-generator, attacks end to end."""

from __future__ import annotations

import json
import os

import pytest
import torch
import torch.nn.functional as F

from gradleak.attacks import ATTACKS, build_attack, observe
from gradleak.attacks.ggl import GGL, latent_kl
from gradleak.attacks.gias import GIAS
from gradleak.attacks.rog import ROG
from gradleak.cli import main
from gradleak.config import ClientConfig, ThreatConfig, load_config
from gradleak.defenses import DEFENSES
from gradleak.errors import GradleakError
from gradleak.fl.client import ClientSetup, client_update
from gradleak.metrics import psnr
from gradleak.models.generator import DCGANDiscriminator, DCGANGenerator, load_generator, save_generator
from gradleak.threat import Knowledge, ThreatModel

TINY = {"latent_dim": 8, "width": 4}


@pytest.fixture(scope="module")
def tiny_generators(tmp_path_factory) -> dict[str, str]:
    """Untrained 16 px generators (unconditional and 10-class conditional) saved to disk."""
    root = tmp_path_factory.mktemp("gen")
    torch.manual_seed(0)
    paths = {}
    for name, cond in (("plain", False), ("cond", True)):
        g = _varied(DCGANGenerator(TINY["latent_dim"], 3, 16, num_classes=10, conditional=cond,
                                   width=TINY["width"]))
        paths[name] = str(root / f"{name}.pt")
        save_generator(paths[name], g)
    return paths


def _varied(g: DCGANGenerator) -> DCGANGenerator:
    """``g`` with large random weights and calibrated BN statistics, in eval mode: DCGAN's own
    N(0, 0.02) init makes every output ~0.5, useless as a prior in tests."""
    for m in g.modules():
        if isinstance(m, torch.nn.ConvTranspose2d):
            torch.nn.init.normal_(m.weight, 0, 0.3)
    g.train()
    with torch.no_grad():
        for _ in range(3):
            z = torch.randn(64, g.latent_dim)
            g(z, torch.randint(g.num_classes, (64,)) if g.conditional else None)
    return g.eval()


def _observation(model, images, labels, *, threat: ThreatConfig | None = None):
    setup = ClientSetup.from_config(ClientConfig(), num_samples=len(labels))
    update = client_update(model, images, labels, setup, seed=0)
    threat_model = ThreatModel.from_config(threat or ThreatConfig(knows_data_distribution=True))
    return observe(model=model, update=update, threat=threat_model, setup=setup, labels=labels,
                   input_shape=tuple(images.shape[1:]), num_classes=10)


def _mlp(side: int, hidden: int = 64) -> torch.nn.Module:
    torch.manual_seed(1)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * side * side, hidden),
                               torch.nn.ReLU(), torch.nn.Linear(hidden, 10))


# -- the generator -------------------------------------------------------------------------------


def test_generator_shapes_range_and_round_trip(tmp_path):
    g = DCGANGenerator(16, 3, 32, width=8).eval()
    with torch.no_grad():
        x = g(torch.randn(5, 16))
    assert x.shape == (5, 3, 32, 32) and float(x.min()) >= 0 and float(x.max()) <= 1
    assert DCGANGenerator(16, 1, 16, width=8)(torch.randn(2, 16)).shape == (2, 1, 16, 16)
    cond = DCGANGenerator(16, 3, 32, num_classes=10, conditional=True, width=8).eval()
    z = torch.randn(2, 16)
    a, b = cond(z, torch.tensor([0, 0])), cond(z, torch.tensor([0, 3]))
    assert torch.equal(a[0], b[0]) and not torch.equal(a[1], b[1])
    with pytest.raises(GradleakError, match="conditional"):
        cond(z)
    disc = DCGANDiscriminator(3, 32, num_classes=10, conditional=True, width=8)
    assert disc(x[:2], torch.tensor([1, 2])).shape == (2,)
    with pytest.raises(GradleakError, match="resolution 24"):
        DCGANGenerator(16, 3, 24)

    save_generator(tmp_path / "g.pt", cond)
    back = load_generator(tmp_path / "g.pt")
    assert back.config() == cond.config() and not back.training
    assert torch.equal(back(z, torch.tensor([4, 5])), cond(z, torch.tensor([4, 5])))


def test_load_generator_errors(tmp_path):
    with pytest.raises(GradleakError, match="does not exist.*train-generator"):
        load_generator(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_text("not a checkpoint")
    with pytest.raises(GradleakError, match="not a torch weights file"):
        load_generator(tmp_path / "junk.pt")
    torch.save({"weights": {}}, tmp_path / "other.pt")
    with pytest.raises(GradleakError, match="'state_dict' and 'config'"):
        load_generator(tmp_path / "other.pt")
    blob = {"state_dict": DCGANGenerator(8, 3, 16, width=4).state_dict(),
            "config": {"latent_dim": 9, "channels": 3, "resolution": 16, "num_classes": 0,
                       "conditional": False, "width": 4}}
    torch.save(blob, tmp_path / "mismatch.pt")
    with pytest.raises(GradleakError, match="does not fit the model"):
        load_generator(tmp_path / "mismatch.pt")


# -- train-generator -----------------------------------------------------------------------------


def _train(out, steps: int, *extra: str) -> int:
    return main(["train-generator", "--out", str(out), "--steps", str(steps), "--batch-size", "8",
                 "--latent-dim", "8", "--width", "4", "--checkpoint-every", "2", "--quiet",
                 "data.resolution=32", *extra])


def test_train_generator_writes_resumes_and_stops(tmp_path, capsys):
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert _train(straight, 5) == 0
    for name in ("checkpoint.pt", "generator.pt", "samples.png"):
        assert (straight / name).is_file()
    assert not [p for p in straight.iterdir() if p.name.startswith(".")]  # no temp files left
    g = load_generator(straight / "generator.pt")
    assert (g.latent_dim, g.resolution, g.channels) == (8, 32, 3)

    assert _train(split, 3) == 0
    assert torch.load(split / "checkpoint.pt", weights_only=True)["step"] == 3
    capsys.readouterr()
    assert _train(split, 5) == 0
    out = capsys.readouterr().out
    assert "resuming from step 3" in out and "trained steps 3..5" in out
    # Resuming restores optimiser and RNG states: the result equals the uninterrupted run.
    a = torch.load(straight / "checkpoint.pt", weights_only=True)
    b = torch.load(split / "checkpoint.pt", weights_only=True)
    assert a["step"] == b["step"] == 5
    for key, value in a["generator"].items():
        assert torch.allclose(value.float(), b["generator"][key].float(), atol=1e-6), key

    before = os.stat(split / "checkpoint.pt").st_mtime_ns
    assert _train(split, 5) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert os.stat(split / "checkpoint.pt").st_mtime_ns == before

    # Other training settings cannot silently continue a checkpoint; non-data keys are refused.
    assert _train(split, 6, "--seed", "1") == 2
    assert "--fresh" in capsys.readouterr().err
    assert _train(split, 6, "attack.lr=1") == 2
    assert "only data.* keys" in capsys.readouterr().err

    # --device cpu is the default's exact run; an unusable device is one line before any work.
    explicit = tmp_path / "explicit"
    assert _train(explicit, 5, "--device", "cpu") == 0
    c = torch.load(explicit / "checkpoint.pt", weights_only=True)
    for key, value in a["generator"].items():
        assert torch.equal(value, c["generator"][key]), key
    capsys.readouterr()
    assert _train(tmp_path / "gpu", 5, "--device", "tpu") == 2
    assert "bad value 'tpu' for device" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert _train(tmp_path / "gpu", 5, "--device", "cuda") == 2
        assert "CUDA is not available" in capsys.readouterr().err
        assert not (tmp_path / "gpu").exists()


# -- gias ----------------------------------------------------------------------------------------

ATTACK_BASE = ["model.name=mlp", "model.hidden=[32]", "data.resolution=16", "data.num_samples=2",
               "--quiet"]


def test_gia_l_attacks_are_registered_and_need_level_2():
    assert {"gias", "ggl", "rog"} <= set(ATTACKS.names())
    for name in ("gias", "ggl"):
        attack = build_attack(load_config(None, [f"attack.name={name}"]).attack)
        assert Knowledge.DATA_DISTRIBUTION in attack.needs()
    assert load_config(None, ["attack.name=gias"]).attack.generator_lr == 1e-3
    assert load_config(None, ["attack.name=rog"]).attack.distance == "l2"


def test_gias_refuses_without_level_2_or_generator(tmp_path, capsys, tiny_generators):
    args = ["attack", "--out", str(tmp_path / "x"), "attack.name=gias", *ATTACK_BASE]
    assert main([*args, f"attack.generator={tiny_generators['plain']}"]) == 2
    assert "threat.knows_data_distribution=true" in capsys.readouterr().err
    assert main([*args, "threat.knows_data_distribution=true"]) == 2
    err = capsys.readouterr().err
    assert "train-generator" in err and "attack.generator=" in err and len(err.strip().splitlines()) == 1
    assert main([*args, "threat.knows_data_distribution=true", "data.resolution=32",
                 f"attack.generator={tiny_generators['plain']}"]) == 2
    assert "data.resolution=32" in capsys.readouterr().err


@pytest.mark.parametrize("name, extra", [
    ("gias", ["attack.latent_iterations=4", "attack.generator_iterations=3", "attack.restarts=2"]),
    ("ggl", ["attack.ggl_budget=40", "attack.labels=yin"]),
])
def test_gia_l_end_to_end(tmp_path, tiny_generators, name, extra):
    out = tmp_path / name
    gen = tiny_generators["cond"]
    assert main(["attack", "--out", str(out), f"attack.name={name}", f"attack.generator={gen}",
                 "threat.knows_data_distribution=true", *ATTACK_BASE, *extra]) == 0
    result = json.loads((out / "result.json").read_text())
    assert result["metrics"]["psnr"] > 0
    assert (out / "reconstruction.png").is_file()
    if name == "gias":
        assert result["iterations"] == 7 and len(result["attack_losses"]) == 2


def test_gias_stage_1_recovers_images_in_the_generators_range():
    """Victims exactly G(z*): latent matching through G beats a random latent by a wide margin."""
    torch.manual_seed(0)
    g = _varied(DCGANGenerator(8, 3, 16, width=8))
    z_star = torch.randn(2, 8)
    with torch.no_grad():
        truth = g(z_star)
    model = _mlp(16)
    obs = _observation(model, truth, torch.tensor([3, 7]))
    attack = GIAS(generator=g, latent_iterations=100, generator_iterations=0, lr=0.1, restarts=2)
    recon = attack(obs, seed=0)
    with torch.no_grad():
        baseline = g(torch.randn(2, 8, generator=torch.Generator().manual_seed(5)))
    ours, theirs = float(psnr(recon.images, truth).mean()), float(psnr(baseline, truth).mean())
    assert ours > theirs + 15, (ours, theirs)


def test_gias_stage_2_lowers_the_gradient_loss():
    torch.manual_seed(0)
    g = _varied(DCGANGenerator(8, 3, 16, width=4))
    truth = torch.rand(1, 3, 16, 16)  # not in G's range: stage 2 has to adapt the generator
    obs = _observation(_mlp(16), truth, torch.tensor([2]))
    one = GIAS(generator=g, latent_iterations=20, generator_iterations=0)(obs, seed=0)
    two = GIAS(generator=g, latent_iterations=20, generator_iterations=20, generator_lr=1e-2)(obs, seed=0)
    assert two.losses[0] < one.losses[0]
    assert two.iterations == 40


# -- ggl -----------------------------------------------------------------------------------------


def test_ggl_kl_and_adaptive_defense():
    assert float(latent_kl(torch.randn(1, 4096, generator=torch.Generator().manual_seed(0)))) < 1e-3
    assert float(latent_kl(torch.full((1, 8), 3.0) + torch.arange(8.0))) > 1

    torch.manual_seed(0)
    g = DCGANGenerator(8, 3, 16, width=4).eval()
    obs = _observation(_mlp(16, 16), torch.rand(1, 3, 16, 16), torch.tensor([4]))
    calls = []

    def defense(update, *, generator=None):
        calls.append(update.kind)
        return DEFENSES.get("topk")(update, generator=generator, sparsity=0.5)

    recon = GGL(generator=g, ggl_budget=20, defense=defense)(obs, seed=0)
    assert recon.images.shape == (1, 3, 16, 16) and recon.labels == [4]
    assert calls and set(calls) == {"gradient"}
    with pytest.raises(GradleakError, match="adaptive"):
        GGL(generator=g, ggl_budget=20, adaptive=True)(obs, seed=0)
    # A training-time defense runs on the search's own trial images (it needs inputs).
    from gradleak.config import DefenseConfig
    from gradleak.defenses import build_defense

    soteria = build_defense(DefenseConfig(name="soteria"))
    recon = GGL(generator=g, ggl_budget=20, defense=soteria)(obs, seed=0)
    assert recon.images.shape == (1, 3, 16, 16)


# -- rog -----------------------------------------------------------------------------------------


def test_rog_reconstructs_a_bicubic_upsampling_of_a_low_res_image():
    truth = torch.rand(2, 3, 16, 16)
    obs = _observation(_mlp(16), truth, torch.tensor([1, 5]))
    attack = build_attack(load_config(None, ["attack.name=rog", "attack.iterations=15"]).attack)
    assert isinstance(attack, ROG) and attack.rog_scale == 4
    seen = []
    original = attack.images
    attack.images = lambda v: (seen.append(v.detach().clone()), original(v))[1]
    recon = attack(obs, seed=0)
    low = seen[-1]
    assert low.shape == (2, 3, 4, 4)
    expected = F.interpolate(low, size=(16, 16), mode="bicubic", align_corners=False).clamp(0, 1)
    assert torch.allclose(recon.images, expected)
    # Smooth: far less high-frequency energy than the random ground truth.
    def roughness(x):
        return float((x[..., 1:] - x[..., :-1]).abs().mean())

    assert roughness(recon.images) < 0.5 * roughness(truth)


class _Invert(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 1 - x


class _Shift(torch.nn.Module):
    """A post-processing net with a parameter, for the state_dict format."""

    def __init__(self, channels: int = 3) -> None:
        super().__init__()
        self.shift = torch.nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.shift.view(1, -1, 1, 1)


def test_rog_applies_the_postprocess_network(tmp_path, capsys):
    from gradleak.attacks.postprocess import POSTPROCESS, save_postprocess

    exported = tmp_path / "post.pt2"
    program = torch.export.export(_Invert(), (torch.rand(2, 3, 16, 16),),
                                  dynamic_shapes=({0: torch.export.Dim.AUTO},))
    torch.export.save(program, str(exported))
    shift = POSTPROCESS.get("residual_cnn")(channels=3, width=4, depth=2)
    with torch.no_grad():  # the last conv outputs its bias only: x -> x + 0.25
        shift.body[-1].weight.zero_()
        shift.body[-1].bias.fill_(0.25)
    state = tmp_path / "post_state.pt"
    save_postprocess(state, "residual_cnn", shift, channels=3, width=4, depth=2)

    obs = _observation(_mlp(16), torch.rand(1, 3, 16, 16), torch.tensor([0]))
    settings = {"iterations": 5, "distance": "l2", "lr": 0.05, "signed": False}
    plain = ROG(**settings)(obs, seed=0)
    inverted = ROG(**settings, postprocess=_Invert())(obs, seed=0)  # user code: a module object
    assert torch.allclose(inverted.images, 1 - plain.images)
    assert inverted.losses == plain.losses
    shifted = ROG(**settings, postprocess=str(state))(obs, seed=0)
    assert torch.allclose(shifted.images, (plain.images + 0.25).clamp(0, 1))
    with pytest.raises(GradleakError, match="torch.export program, which carries code"):
        ROG(**settings, postprocess=str(exported))(obs, seed=0)

    (tmp_path / "bad.pt").write_text("nope")
    assert main(["attack", "--out", str(tmp_path / "r"), "attack.name=rog", "attack.iterations=2",
                 f"attack.postprocess={tmp_path / 'bad.pt'}", *ATTACK_BASE]) == 2
    assert "attack.postprocess" in capsys.readouterr().err
