"""Probe the CLI with bad inputs, each in its own subprocess, and classify what happens.

    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/bad_inputs.py [--jobs 2] [--timeout 90]

Outcomes: ``one-line`` (exit 2, exactly one stderr line ``gradleak: error: ...``), ``traceback``,
``accepted`` (exit 0: a bad input silently accepted), ``code-executed`` (a data file's payload
created its marker file), ``other`` (timeout, other exit code, several lines). The target is
100 % one-line. Tiny settings everywhere (MLP, 16 px, 1 iteration) so it finishes in minutes.
"""

from __future__ import annotations

import argparse
import os
import pickle
import sqlite3
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

TINY = ["model.name=mlp", "model.hidden=[8]", "data.resolution=16", "attack.iterations=1", "--quiet"]


class _Payload:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _png(path: Path, width: int, height: int, pixels: bool = True) -> None:
    """A PNG whose header declares ``width x height`` (IDAT only when ``pixels``)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    raw = b"".join(b"\x00" + b"\x80\x80\x80" * width for _ in range(height)) if pixels else b""
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
                     + (chunk(b"IDAT", zlib.compress(raw)) if pixels else b"") + chunk(b"IEND", b""))


def make_files(tmp: Path, marker: str) -> None:
    import torch

    (tmp / "random.pt").write_bytes(os.urandom(2048))
    (tmp / "empty.pt").write_bytes(b"")
    torch.save([1, 2, 3], tmp / "list.pt")
    torch.save({"net.0.weight": torch.zeros(8, 768), "net.0.bias": torch.zeros(8)}, tmp / "other.pt")
    torch.save({"x": torch.zeros(1000)}, tmp / "full.pt")
    (tmp / "truncated.pt").write_bytes((tmp / "full.pt").read_bytes()[:300])
    torch.save({"state_dict": _Payload(marker)}, tmp / "bomb.pt")
    (tmp / "bomb.pkl").write_bytes(pickle.dumps(_Payload(marker)))
    torch.save({"class": "os:system", "kwargs": {"command": f"touch {marker}"}, "state_dict": {}},
               tmp / "class.pt")
    torch.save({"arch": "os:system", "kwargs": {"command": f"touch {marker}"}, "state_dict": {}},
               tmp / "arch.pt")
    torch.jit.save(torch.jit.script(torch.nn.Identity()), str(tmp / "script.pt"))
    (tmp / "a_file").write_text("x")
    yamls = {"bad": "data: [unclosed\n", "list": "- 1\n- 2\n", "empty": "",
             "bomb": f"attack:\n  iterations: !!python/object/apply:os.system ['touch {marker}']\n",
             "noscen": "base: {}\n", "noname": "scenarios:\n  - {title: x}\n",
             "setlist": "scenarios:\n  - {name: a, set: [client.lr, 1]}\n",
             "escape": "scenarios:\n  - {name: ../../x}\n",
             "dup": "scenarios:\n  - {name: a}\n  - {name: a}\n",
             "badkey": "scenarios:\n  - {name: a, set: {attack.bogus: 1}}\n",
             "scen_str": "scenarios: abc\n", "scen_item": "scenarios: [1]\n",
             "extra": "scenarios:\n  - {name: a, sett: {}}\n",
             "badbase": "base: [1]\nscenarios:\n  - {name: a}\n",
             "planbomb": f"scenarios: !!python/object/apply:os.system ['touch {marker}']\n",
             "nanplan": "scenarios:\n  - {name: a, set: {attack.lr: .nan}}\n"}
    for name, text in yamls.items():
        (tmp / f"{name}.yaml").write_text(text)
    for name, content in (("corrupt", b"definitely not sqlite" * 100),):
        (tmp / name).mkdir()
        (tmp / name / "results.sqlite").write_bytes(content)
    (tmp / "foreign").mkdir()
    db = sqlite3.connect(tmp / "foreign" / "results.sqlite")
    db.execute("CREATE TABLE runs (a TEXT)")
    db.commit()
    db.close()
    for name, (w, h, pixels) in {"bombimg": (200_000, 200_000, False), "tiny": (1, 1, True)}.items():
        folder = tmp / name / "train" / "cls"
        folder.mkdir(parents=True)
        _png(folder / "img.png", w, h, pixels)
    gen = tmp / "gen"
    gen.mkdir()
    torch.save({"state_dict": _Payload(marker)}, gen / "checkpoint.pt")
    gen2 = tmp / "gen2"
    gen2.mkdir()
    (gen2 / "checkpoint.pt").write_bytes(os.urandom(500))


A = ["attack", "--out", "{tmp}/o", *TINY]


def cases() -> list[list[str]]:
    attack_values = [
        "attack.lr=nan", "attack.lr=inf", "attack.lr=1e400", "attack.lr=0", "attack.lr=-1",
        "client.lr=nan", "client.lr=-inf", "defense.noise_multiplier=1e400",
        "defense.noise_multiplier=nan", "attack.tv=inf", "defense.bound=nan", "fl.alpha=0",
        "metrics.psnr_threshold=nan", "metrics.lpips_threshold=-1", "model.dropout=1.5",
        "model.dropout=-0.1", "model.dropout=nan", "model.kernel_size=40", "model.kernel_size=0",
        "model.hidden=[-3]", "model.hidden=[0]", "model.hidden=[1", "model.hidden=abc",
        "model.width=0", "model.depth=0", "fl.fraction=0", "fl.fraction=2", "fl.fraction=-0.5",
        "data.indices=[3,3]", "data.indices=[-1]", "data.resolution=2", "data.resolution=100000",
        "data.resolution=abc", "data.num_samples=0", "data.num_samples=1000000000",
        "data.dataset=bogus", "data.split=val", "model.name=bogus", "attack.name=bogus",
        "defense.name=bogus", "attack.iterations=0", "attack.iterations=1.5", "attack.restarts=0",
        "seed=-1", "seed=1099511627776", "seed=abc", "device=gpu", "device=cuda:abc",
        "attack.labels=magic", "client.protocol=fedprox", "client.batch_size=0",
        "client.local_epochs=0", "attack.rog_scale=0", "defense.sparsity=1.5", "defense.bits=0",
        "defense.bits=64", "threat.knows_labels=maybe", "attack.bogus=1", "noequals", "=value",
        "attack.=1", "attack=1", "fl.attack_round=20", "model.checkpoint=", "data.root=",
        "model.skip_cuts=[1]", "attack.layers=[", "model.norm=layer"]
    out = [A + [v] for v in attack_values]
    out += [A + ["data.indices=[1]", "data.num_samples=2"],
            A + ["attack.name=rog", "attack.rog_scale=3"]]
    out += [A + [f"model.checkpoint={{tmp}}/{f}"] for f in
            ("random.pt", "empty.pt", "truncated.pt", "list.pt", "other.pt", "missing.pt", "bomb.pt",
             "bomb.pkl", "a_file")]
    out += [A + ["attack.name=gias", "threat.knows_data_distribution=true",
                 f"attack.generator={{tmp}}/{f}"] for f in ("random.pt", "bomb.pt", "list.pt")]
    out += [A + ["attack.name=rog", f"attack.postprocess={{tmp}}/{f}"] for f in
            ("class.pt", "arch.pt", "script.pt", "bomb.pt", "random.pt")]
    out += [A + ["--config", f"{{tmp}}/{f}.yaml"] for f in ("bad", "list", "bomb", "missing")]
    out += [A + ["data.dataset=imagefolder", f"data.root={{tmp}}/{d}"] for d in
            ("bombimg", "tiny", "nowhere")]
    out += [["attack", "--out", "", *TINY], ["attack", "--out", "{tmp}/a_file", *TINY],
            ["attack", "--out", "{tmp}/a_file/sub", *TINY], ["attack", *TINY],
            A + ["--bogus-flag"]]
    out += [["audit", "--plan", f"{{tmp}}/{f}.yaml", "--out", "{tmp}/au", "--quiet"] for f in
            ("bad", "list", "empty", "noscen", "noname", "setlist", "escape", "dup", "badkey",
             "scen_str", "scen_item", "extra", "badbase", "planbomb", "nanplan", "missing")]
    out += [["audit", "--out", "{tmp}/a_file"], ["audit", "--out", "{tmp}/au", "fl.fraction=2"]]
    out += [["config", "fl.fraction=0"], ["config", "--config", "{tmp}/missing.yaml"],
            ["config", "--config", "{tmp}/bomb.yaml"]]
    ig = ["igsa", "--out", "{tmp}/i", *TINY[:3]]
    out += [ig + ["--radius", v] for v in ("nan", "-1", "0", "inf")]
    out += [ig + ["--points", v] for v in ("0", "-1", "abc")]
    th = ["theory", "--out", "{tmp}/t"]
    out += [th + a for a in (["--lr", "inf"], ["--lr", "0"], ["--samples", "0"],
                             ["--max-updates", "0"], ["--seeds", "0"], ["--iterations", "0"],
                             ["--attacks", "bogus"], ["model.hidden=[0]"])]
    tg = ["train-generator", "--out", "{tmp}/g", "--steps", "1", "--quiet"]
    out += [tg + a for a in (["--lr", "nan"], ["--steps", "0"], ["--batch-size", "x"],
                             ["--batch-size", "0"], ["--latent-dim", "0"], ["--width", "0"],
                             ["--seed", "-1"], ["--checkpoint-every", "0"], ["attack.lr=1"],
                             ["data.resolution=2"])]
    out += [["train-generator", "--out", "{tmp}/gen", "--steps", "1", "--quiet"],
            ["train-generator", "--out", "{tmp}/gen2", "--steps", "1", "--quiet"]]
    ss = ["stage-study", "--out", "{tmp}/s"]
    out += [ss + a for a in (["--threads", "0"], ["--every", "-2"], ["--igsa-points", "0"],
                             ["fl.fraction=2"])]
    pu = ["privacy-utility", "--out", "{tmp}/p"]
    out += [pu + a for a in (["--grid", "topk=,"], ["--grid", "topk=0.9,,0.95"], ["--grid", "topk=2"],
                             ["--grid", "bogus=1"], ["--grid", "noequals"], ["--defenses", "bogus"],
                             ["--threads", "0"], ["--grid", "topk=nan"])]
    ex = ["experiment", "run", "tab2", "--out", "{tmp}/e"]
    out += [["experiment", "show", "nope"], ["experiment", "run", "nope", "--out", "{tmp}/e"],
            ex + ["--jobs", "0"], ex + ["--executor", "slurm"], ex + ["--gpus-per-task", "-1"],
            ex + ["--gpus-per-task", "nan"], ex + ["--retries", "-1"], ex + ["--profile", "bogus"],
            ["experiment", "run", "tab2", "--out", "{tmp}/corrupt"],
            ["experiment", "show", "{tmp}/bomb.yaml"], ["experiment", "run", "tab2", "--out", ""]]
    out += [["report", "{tmp}/corrupt"], ["report", "{tmp}/foreign"], ["report", "{tmp}/nowhere"],
            ["report", "{tmp}/a_file"], [], ["bogus-command"]]
    return out


def classify(argv: list[str], tmp: Path, marker: Path, timeout: float) -> tuple[str, str]:
    argv = [a.replace("{tmp}", str(tmp)) for a in argv]
    try:
        proc = subprocess.run([sys.executable, "-m", "gradleak.cli", *argv], capture_output=True,
                              text=True, timeout=timeout, cwd=tmp)
    except subprocess.TimeoutExpired:
        return "other", f"timeout after {timeout} s"
    err = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    if marker.exists():
        return "code-executed", proc.stderr[-300:]
    if "Traceback" in proc.stderr:
        return "traceback", err[-1] if err else ""
    if proc.returncode == 0:
        return "accepted", proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    if proc.returncode == 2 and len(err) == 1 and err[0].startswith("gradleak: error:"):
        return "one-line", err[0]
    return "other", f"exit {proc.returncode}: " + " | ".join(err)[-300:]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=90.0)
    parser.add_argument("--verbose", action="store_true", help="print every case's message")
    args = parser.parse_args()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as root:
        root = Path(root)
        all_cases = cases()
        folders = []
        for i in range(len(all_cases)):  # each case gets its own folder (no interference)
            tmp = root / f"c{i:03d}"
            tmp.mkdir()
            folders.append(tmp)
        make_files(root / "c000", str(root / "c000" / "marker"))
        template = root / "c000"
        for tmp in folders[1:]:
            subprocess.run(["cp", "-a", f"{template}/.", str(tmp)], check=True)
            # payloads name the template's marker: point them at this folder's
        with ThreadPoolExecutor(args.jobs) as pool:
            results = list(pool.map(
                lambda c: classify(c[1], folders[c[0]], template / "marker", args.timeout),
                enumerate(all_cases)))
    counts: dict[str, int] = {}
    for argv, (kind, message) in zip(all_cases, results, strict=True):
        counts[kind] = counts.get(kind, 0) + 1
        if kind != "one-line" or args.verbose:
            print(f"{kind:14} {' '.join(argv)[:110]}\n               {message[:200]}")
    total = len(all_cases)
    print(f"\n{total} bad inputs in {time.perf_counter() - started:.0f} s: "
          + ", ".join(f"{counts.get(k, 0)} {k}" for k in
                      ("one-line", "traceback", "accepted", "code-executed", "other")))
    return 0 if counts.get("one-line", 0) == total else 1


if __name__ == "__main__":
    sys.exit(main())
