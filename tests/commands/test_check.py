"""``gradleak check``: validates a setup before any audit run and estimates the audit's time."""

from __future__ import annotations

import torch

from gradleak.cli import main

SMALL = ["model.name=mlp", "model.hidden=[16]", "data.resolution=8", "attack.iterations=20",
         "--budget", "quick"]


def test_check_describes_the_audit_and_its_time(capsys):
    assert main(["check", *SMALL]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("model: mlp (") and "parameters" in out[0]
    assert out[1].startswith("data: skimage") and "10 classes" in out[1]
    assert out[3].startswith("levels: L0-basic, L1-priors") and "not run: L2-distribution" in out[3]
    assert out[-1].startswith("estimated time: first round ~") and "measured here" in out[-1]


def test_a_key_without_effect_gets_one_warning(recwarn):
    assert main(["check", *SMALL, "client.batch_size=4"]) == 0
    said = [str(w.message) for w in recwarn
            if "client.batch_size=4 has no effect with client.protocol=fedsgd" in str(w.message)]
    assert len(said) == 1

    assert main(["check", *SMALL, "client.mix_k=2"]) == 0
    assert any("client.mix_k=2 has no effect with client.mix=none" in str(w.message)
               for w in recwarn)


def test_check_refuses_what_the_audit_could_not_use(tmp_path, capsys):
    net = tmp_path / "net.py"
    net.write_text("import torch\nclass Net(torch.nn.Module):\n"
                   "    def __init__(self):\n        super().__init__()\n"
                   "        self.fc = torch.nn.Linear(3 * 8 * 8, 10)\n"
                   "    def forward(self, x):\n        return self.fc(x.flatten(1))\n")
    torch.save({"fc.weight": torch.zeros(10, 5), "fc.bias": torch.zeros(10)}, tmp_path / "bad.pt")
    cases = [([f"model.name={net}:Nope"], "Nope"),
             (["data.dataset=npz", f"data.root={tmp_path / 'none.npz'}"], "does not exist"),
             ([f"model.name={net}:Net", f"model.checkpoint={tmp_path / 'bad.pt'}"],
              "does not fit the model")]
    for extra, message in cases:
        assert main(["check", "data.resolution=8", *extra]) == 2, extra
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
