"""gradleak's Inverting Gradients vs breaching 0.1.2's ``invertinggradients``, head to head.

Both attacks get the identical model weights, victim images, labels, observed gradient and
iteration budget (CPU, one thread each). breaching's dependencies never enter gradleak's venv:
the script creates a separate venv (``/tmp/breaching-venv`` or ``--venv``) with torch and
``breaching==0.1.2`` and runs breaching there in a worker process. The worker rebuilds the model
with gradleak's own model code (``src/`` on ``sys.path``: the model modules need only torch,
torchvision and PyYAML) and loads the exact state_dict used here.

For each case it prints PSNR / SSIM / LPIPS of both reconstructions (scored with
``gradleak.metrics.score``), seconds per iteration of both, and the ratios. Target: ours at least
breaching's quality on every case and at most its seconds per iteration.

Single-seed differences of 1-2 dB are noise (the victims, and the starts unless ``--same-init``,
change with the seed). With ``--seeds`` the script also prints the paired difference ours -
breaching per metric, mean +- a 95% Student-t interval over the seeds, and a verdict per case:
``better`` (at least breaching's mean on every metric), ``tie`` (some mean worse, but every
interval contains 0) or ``worse`` (an interval entirely on breaching's side). ``--json`` keeps the
means, the intervals and every seed's scores, rewritten after each case.

    .venv/bin/python benchmarks/vs_breaching.py [--iterations 500] [--cases mlp-b1 convnet-nobn]

Both sides use the same total-variation weight and step size (``--tv``, default 0.2 =
breaching's ``invertinggradients`` preset; ``--lr``, default 0.1). The two TV terms are the same
mean of |dx| + |dy| up to the border (breaching zero-pads, so it also penalises the edge pixels'
distance from 0). ``--ours-tv`` / ``--ours-lr`` override gradleak's side alone, e.g. ``--ours-tv
1e-4`` for its library preset. breaching's images live "inside the normalisation": the worker
tells it mean 0 / std 1, since gradleak's models standardise their input themselves, so its box
constraint is the same [0, 1] as ours.

That mean 0 / std 1 also makes breaching's ``randn`` start N(0, 1) in *pixel* space, 3-4x
wider than ours (N(0, 1) in normalised space, i.e. mean + std * N(0, 1), clamped to [0, 1]). A
different start moves a single run by several dB either way. It is not systematically better:
over seeds 0-9 on mlp-b1, gradleak from a pixel-space N(0, 1) start scored 27.3 dB and from its
own start 28.5. ``--same-init`` hands breaching gradleak's initial images (its
``reconstruct(initial_data=...)``), so only the optimisers differ and the paired differences lose
the start's variance.

The TV terms differ at the border: breaching's zero-padded convolution also penalises each edge
pixel's distance from 0. ``--ours-tv-border zero`` gives gradleak the same TV
(``attack.tv_border=zero``); the two engines then agree to within 0.01 dB on average over 20
seeds (docs/benchmarks.md), so they are otherwise equivalent.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import torch

from gradleak import metrics
from gradleak.attacks import build_attack, observe
from gradleak.config import load_config
from gradleak.data import build_dataset
from gradleak.data.sampling import select_victim_samples
from gradleak.fl.client import ClientSetup, client_update
from gradleak.models import build_model
from gradleak.provenance import seed_everything
from gradleak.threat import ThreatModel

SRC = Path(__file__).resolve().parents[1] / "src"
TORCH_PINS = ["torch==2.14.1", "torchvision==0.29.1"]
BREACHING_PIN = "breaching==0.1.2"

MODELS = {
    "convnet-bn": ["model.name=convnet", "model.norm=batch"],
    "convnet-nobn": ["model.name=convnet", "model.norm=none"],
    "resnet18": ["model.name=resnet18"],
    "mlp": ["model.name=mlp"],
}
CASES = {f"{m}-b{b}": (m, b) for m in MODELS for b in (1, 4)}

WORKER = textwrap.dedent('''
    """Run breaching 0.1.2's invertinggradients on a case file written by vs_breaching.py."""
    import logging
    import sys
    import time
    from types import SimpleNamespace

    import torch

    case_path, out_path, src = sys.argv[1], sys.argv[2], sys.argv[3]
    sys.path.insert(0, src)  # gradleak's model code: torch/torchvision/yaml only
    import breaching  # noqa: E402
    from gradleak.config import ModelConfig  # noqa: E402
    from gradleak.models import build_model  # noqa: E402

    logging.getLogger("breaching").setLevel(logging.WARNING)
    torch.set_num_threads(1)
    case = torch.load(case_path, weights_only=False)
    model = build_model(ModelConfig(**case["model_cfg"]), **case["build"])
    model.load_state_dict(case["state_dict"])
    model.eval()
    images, labels = case["images"], case["labels"]

    overrides = [
        f"optim.max_iterations={case['iterations']}",
        f"optim.step_size={case['lr']}",
        f"regularization.total_variation.scale={case['tv']}",
        f"optim.callback={10 ** 9}",
        f"restarts.num_trials={case.get('restarts', 1)}",
    ]
    cfg = breaching.get_attack_config("invertinggradients", overrides=overrides)
    attacker = breaching.attacks.prepare_attack(model, torch.nn.CrossEntropyLoss(), cfg,
                                                dict(dtype=torch.float, device=torch.device("cpu")))
    channels = images.shape[1]
    metadata = SimpleNamespace(shape=tuple(images.shape[1:]), mean=[0.0] * channels,
                               std=[1.0] * channels, modality="vision")
    payload = [dict(parameters=[p.detach().clone() for p in model.parameters()],
                    buffers=[b.detach().clone() for b in model.buffers()], metadata=metadata)]
    shared = [dict(gradients=[g.clone() for g in case["gradients"]], buffers=None,
                   metadata=dict(num_data_points=images.shape[0], labels=labels.clone(),
                                 local_hyperparams=None))]
    if case["init"] is not None and case["init"].ndim == 5:  # one start per restart
        _trial = attacker._run_trial

        def _per_trial(rec_model, shared_data, labels, stats, trial, initial_data=None, dryrun=False):
            return _trial(rec_model, shared_data, labels, stats, trial, initial_data[trial], dryrun)

        attacker._run_trial = _per_trial
    torch.manual_seed(case["seed"])
    start = time.perf_counter()
    reconstructed, stats = attacker.reconstruct(payload, shared, {}, initial_data=case["init"],
                                                dryrun=False)
    seconds = time.perf_counter() - start
    done = len(stats.get("Trial_0_Val", [])) or case["iterations"]
    torch.save({"images": reconstructed["data"].detach().clamp(0, 1).cpu(), "seconds": seconds,
                "iterations": done, "labels": reconstructed["labels"].cpu()}, out_path)
''')


def _pip(python: Path, *args: str) -> None:
    cmd = [str(python), "-m", "pip", "install", "--disable-pip-version-check", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(f"pip failed ({' '.join(cmd)}):\n{proc.stdout}\n{proc.stderr}\n")
        sys.exit(proc.returncode or 1)


def ensure_venv(venv: Path) -> Path:
    """The breaching venv's python, creating the venv and installing breaching if needed."""
    python = venv / "bin" / "python"
    probe = [str(python), "-c", "import breaching, torch; print(torch.__version__)"]
    if python.exists() and subprocess.run(probe, capture_output=True).returncode == 0:
        return python
    print(f"creating {venv} with {' '.join(TORCH_PINS)} and {BREACHING_PIN} (a few minutes) ...",
          flush=True)
    if not python.exists():
        subprocess.run(["python3", "-m", "venv", str(venv)], check=True)
    _pip(python, *TORCH_PINS)
    _pip(python, BREACHING_PIN)
    check = subprocess.run(probe, capture_output=True, text=True)
    if check.returncode != 0:
        sys.stderr.write(f"breaching installed but does not import:\n{check.stderr}\n")
        sys.exit(1)
    return python


def prepare_case(name: str, args: argparse.Namespace) -> dict:
    """Mirror ``gradleak.runner.run_scenario`` up to the attack, keeping the model."""
    model_key, batch = CASES[name]
    overrides = [*MODELS[model_key], f"data.num_samples={batch}", f"attack.iterations={args.iterations}",
                 f"seed={args.seed}", "attack.name=ig", f"attack.restarts={getattr(args, 'restarts', 1)}"]
    tv = args.tv if args.ours_tv is None else args.ours_tv
    lr = args.lr if args.ours_lr is None else args.ours_lr
    overrides += [f"attack.tv={tv}", f"attack.lr={lr}", f"attack.keep={args.keep}",
                  f"attack.tv_border={args.ours_tv_border}"]
    cfg = load_config(None, overrides)
    seed_everything(cfg.seed)
    dataset = build_dataset(cfg.data)
    images, labels, _ = select_victim_samples(dataset, cfg.data, seed=cfg.seed)
    setup = ClientSetup.from_config(cfg.client, num_samples=len(labels))
    threat = ThreatModel.from_config(cfg.threat)
    attack = build_attack(cfg.attack)
    build = dict(num_classes=dataset.num_classes, channels=dataset.channels,
                 resolution=dataset.resolution, mean=tuple(dataset.mean), std=tuple(dataset.std))
    model = build_model(cfg.model, **build)
    model = attack.prepare_model(model, input_shape=tuple(images.shape[1:]),
                                 num_classes=dataset.num_classes, seed=cfg.seed)
    model.eval()
    update = client_update(model, images, labels, setup, seed=cfg.seed)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    if len(names) != len(list(model.parameters())) or list(update.tensors) != names:
        raise SystemExit(f"{name}: the update does not cover every parameter in order")
    obs = observe(model=model, update=update, threat=threat, setup=setup, labels=labels,
                  input_shape=tuple(images.shape[1:]), num_classes=dataset.num_classes)
    return dict(cfg=cfg, attack=attack, model=model, obs=obs, images=images, labels=labels,
                build=build, gradients=[update.tensors[n] for n in names])


def run_ours(case: dict) -> tuple[torch.Tensor, float]:
    start = time.perf_counter()
    recon = case["attack"](case["obs"], seed=case["cfg"].seed, progress=False)
    seconds = time.perf_counter() - start
    return recon.images, seconds / recon.iterations


METRICS = ("psnr", "ssim", "lpips")
HIGHER_IS_BETTER = {"psnr": True, "ssim": True, "lpips": False}


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _mean_scores(scores: list[dict]) -> dict:
    """Mean PSNR/SSIM/LPIPS over seeds (LPIPS None if any seed lacks it)."""
    out = {k: _mean([s[k] for s in scores]) for k in ("psnr", "ssim")}
    lp = [s["lpips"] for s in scores]
    out["lpips"] = None if any(v is None for v in lp) else _mean(lp)
    return out


def paired_difference(ours: list[float], theirs: list[float]) -> dict:
    """Mean of ours - theirs over seeds with a two-sided 95% Student-t interval (paired design:
    same victims, weights and starts per seed). ``half_width`` is None for a single seed."""
    diffs = [a - b for a, b in zip(ours, theirs, strict=True)]
    mean = _mean(diffs)
    if len(diffs) < 2:
        return {"mean": mean, "half_width": None}
    from scipy import stats

    sd = (sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1)) ** 0.5
    half = float(stats.t.ppf(0.975, len(diffs) - 1)) * sd / len(diffs) ** 0.5
    return {"mean": mean, "half_width": half}


def judge(row: dict) -> str:
    """``better`` when ours is at least breaching's mean on every metric (the issue's target);
    ``tie`` when some mean is worse but every 95% interval contains 0 (indistinguishable at this
    number of seeds); ``worse`` when some interval lies entirely on breaching's side."""
    verdict = "better"
    for k in METRICS:
        diff = row["difference"].get(k)
        if diff is None:
            continue
        sign = 1 if HIGHER_IS_BETTER[k] else -1
        gain = sign * diff["mean"]
        if gain >= 0:
            continue
        if diff["half_width"] is None or -gain > diff["half_width"]:
            return "worse"
        verdict = "tie"
    return verdict


def ours_initial(case: dict) -> torch.Tensor:
    """gradleak's starting images for this case: the engine's first draws from its seeded
    generator, one per restart (with known labels nothing else is drawn between them); with
    several restarts they are stacked on a leading axis, (R, B, C, H, W)."""
    generator = torch.Generator().manual_seed(case["cfg"].seed)
    draws = [case["attack"].initial(case["obs"], case["model"], generator)
             for _ in range(case["cfg"].attack.restarts)]
    return draws[0] if len(draws) == 1 else torch.stack(draws)


def run_breaching(python: Path, case: dict, args: argparse.Namespace, tmp: Path, name: str
                  ) -> tuple[torch.Tensor, float]:
    worker = tmp / "breaching_worker.py"
    worker.write_text(WORKER)
    case_file, out_file = tmp / f"{name}.case.pt", tmp / f"{name}.breaching.pt"
    cfg = case["cfg"]
    torch.save({
        "model_cfg": {k: copy.deepcopy(v) for k, v in vars(cfg.model).items()},
        "build": case["build"],
        "state_dict": case["model"].state_dict(),
        "images": case["images"], "labels": case["labels"],
        "gradients": case["gradients"],
        "iterations": args.iterations, "lr": args.lr, "tv": args.tv,
        "seed": cfg.seed, "restarts": cfg.attack.restarts,
        "init": ours_initial(case) if args.same_init else None,
    }, case_file)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HYDRA_FULL_ERROR="1")
    proc = subprocess.run([str(python), str(worker), str(case_file), str(out_file), str(SRC)],
                          capture_output=True, text=True, env=env, cwd=tmp)
    if proc.returncode != 0:
        sys.stderr.write(f"breaching worker failed on {name}:\n{proc.stdout[-4000:]}\n"
                         f"{proc.stderr[-4000:]}\n")
        sys.exit(1)
    out = torch.load(out_file, weights_only=False)
    return out["images"], out["seconds"] / out["iterations"]


def _fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=500)
    parser.add_argument("--cases", nargs="+", default=list(CASES),
                        help=f"subset of: {', '.join(CASES)} (a bare model name means both batches)")
    parser.add_argument("--venv", type=Path, default=Path("/tmp/breaching-venv"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tv", type=float, default=0.2, help="TV weight of both attacks")
    parser.add_argument("--lr", type=float, default=0.1, help="step size of both attacks")
    parser.add_argument("--ours-tv", type=float, default=None, help="gradleak's TV weight alone")
    parser.add_argument("--ours-lr", type=float, default=None, help="gradleak's step size alone")
    parser.add_argument("--ours-tv-border", default="none", choices=("none", "zero"),
                        help="gradleak's attack.tv_border; zero = breaching's TV (see above)")
    parser.add_argument("--keep", default="last", choices=("last", "best"),
                        help="gradleak's attack.keep (breaching always returns its best iterate)")
    parser.add_argument("--same-init", action="store_true",
                        help="start breaching from gradleak's initial images (see above)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None,
                        help="average every case over these seeds (victims and starts differ; "
                             "single-seed gaps of 1-2 dB are noise)")
    parser.add_argument("--json", type=Path, default=None,
                        help="also write the rows (means, paired differences, per-seed scores) here")
    args = parser.parse_args()
    seeds = args.seeds or [args.seed]

    names: list[str] = []
    for item in args.cases:
        expanded = [item] if item in CASES else [c for c in CASES if CASES[c][0] == item]
        if not expanded:
            parser.error(f"unknown case {item!r}; choose from {', '.join(CASES)} or {', '.join(MODELS)}")
        names += [c for c in expanded if c not in names]

    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    python = ensure_venv(args.venv)

    header = (f"{'case':16} {'ours psnr':>9} {'ssim':>6} {'lpips':>6} | {'brch psnr':>9} {'ssim':>6} "
              f"{'lpips':>6} | {'ours s/it':>9} {'brch s/it':>9} {'s/it ratio':>10} {'dPSNR':>6}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="vs_breaching_") as tmpdir:
        tmp = Path(tmpdir)
        ours_tv = args.tv if args.ours_tv is None else args.ours_tv
        ours_lr = args.lr if args.ours_lr is None else args.ours_lr
        print(f"seeds {seeds} (means), iterations {args.iterations}, CPU, 1 thread per side; "
              f"TV ours {ours_tv:g} / breaching "
              f"{args.tv:g}{' (ours zero-bordered)' if args.ours_tv_border == 'zero' else ''}, "
              f"lr ours {ours_lr:g} / breaching {args.lr:g}"
              f"{'; same initial images' if args.same_init else ''}", flush=True)
        print(header)
        print("-" * len(header), flush=True)
        for name in names:
            per_seed = []
            for seed in seeds:
                args.seed = seed
                case = prepare_case(name, args)
                ours_img, ours_sit = run_ours(case)
                theirs_img, theirs_sit = run_breaching(python, case, args, tmp, name)
                per_seed.append((metrics.score(ours_img, case["images"]), ours_sit,
                                 metrics.score(theirs_img, case["images"]), theirs_sit))
            ours, ours_sit = _mean_scores([p[0] for p in per_seed]), _mean([p[1] for p in per_seed])
            theirs, theirs_sit = _mean_scores([p[2] for p in per_seed]), _mean([p[3] for p in per_seed])
            difference = {k: paired_difference([p[0][k] for p in per_seed], [p[2][k] for p in per_seed])
                          for k in METRICS if ours[k] is not None and theirs[k] is not None}
            row = dict(case=name, iterations=args.iterations, seeds=seeds,
                       ours={k: ours[k] for k in METRICS} | {"s_per_it": ours_sit},
                       breaching={k: theirs[k] for k in METRICS} | {"s_per_it": theirs_sit},
                       difference=difference,
                       per_seed=[dict(seed=seed, ours={k: p[0][k] for k in METRICS} | {"s_per_it": p[1]},
                                      breaching={k: p[2][k] for k in METRICS} | {"s_per_it": p[3]})
                                 for seed, p in zip(seeds, per_seed, strict=True)])
            row["verdict"] = judge(row)
            rows.append(row)
            if args.json is not None:  # after every case, atomically: a long run keeps what it did
                partial = args.json.with_name(args.json.name + ".part")
                partial.write_text(json.dumps(rows, indent=2))
                partial.replace(args.json)
            print(f"{name:16} {ours['psnr']:9.2f} {ours['ssim']:6.3f} {_fmt(ours['lpips'], '6.3f'):>6} | "
                  f"{theirs['psnr']:9.2f} {theirs['ssim']:6.3f} {_fmt(theirs['lpips'], '6.3f'):>6} | "
                  f"{ours_sit:9.4f} {theirs_sit:9.4f} {ours_sit / theirs_sit:10.2f} "
                  f"{ours['psnr'] - theirs['psnr']:+6.2f}", flush=True)

    if len(seeds) > 1:
        print(f"\npaired differences ours - breaching over {len(seeds)} seeds, mean +- 95% t-interval")
        print(f"{'case':16} {'dPSNR':>14} {'dSSIM':>16} {'dLPIPS':>16}  verdict")
        for r in rows:
            cells = []
            for k, spec in (("psnr", "+.2f"), ("ssim", "+.3f"), ("lpips", "+.3f")):
                d = r["difference"].get(k)
                cells.append("n/a" if d is None else f"{format(d['mean'], spec)} +- "
                             f"{format(d['half_width'], spec.lstrip('+'))}")
            print(f"{r['case']:16} {cells[0]:>14} {cells[1]:>16} {cells[2]:>16}  {r['verdict']}")
    print("\ns/it ratio = ours / breaching (target <= 1); dPSNR = ours - breaching (target >= 0)")
    fails = [r["case"] for r in rows
             if r["ours"]["psnr"] < r["breaching"]["psnr"] or r["ours"]["ssim"] < r["breaching"]["ssim"]
             or (r["ours"]["lpips"] is not None and r["breaching"]["lpips"] is not None
                 and r["ours"]["lpips"] > r["breaching"]["lpips"])
             or r["ours"]["s_per_it"] > r["breaching"]["s_per_it"]]
    print("target met on every case" if not fails else f"target missed on: {', '.join(fails)}")
    worse = [r["case"] for r in rows if r["verdict"] == "worse"]
    if len(seeds) > 1:
        print("no case significantly worse than breaching (95%)" if not worse
              else f"significantly worse on: {', '.join(worse)}")


if __name__ == "__main__":
    main()
