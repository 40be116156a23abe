"""The README's Python examples run as written (tiny budgets)."""

from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_own_module_and_dataset_example_runs():
    blocks = [b.split("```", 1)[0] for b in README.read_text().split("```python\n")[1:]]
    (example,) = [b for b in blocks if "Scenario.from_config(" in b and "TensorDataset" in b]
    assert len(example.strip().splitlines()) <= 12
    code = example.replace("attack.iterations=300", "attack.iterations=5").replace("print(", "_ = (")
    exec(compile(code, "README.md", "exec"), {})


def test_the_text_example_runs_with_a_users_model_directory(tmp_path, monkeypatch):
    from gradleak.config import ModelConfig
    from gradleak.models.hf import build_text_model

    model = build_text_model(ModelConfig(name="gpt2-tiny", hidden_size=128, layers=2, heads=2),
                             num_classes=2, seed=0)
    model.hf.save_pretrained(tmp_path / "my-lm", safe_serialization=True)
    model.tokenizer.hf.save_pretrained(tmp_path / "my-lm")
    monkeypatch.chdir(tmp_path)
    blocks = [b.split("```", 1)[0] for b in README.read_text().split("```python\n")[1:]]
    (example,) = [b for b in blocks if "model.name=hf:my-lm" in b]
    namespace: dict = {}
    exec(compile(example.replace("print(", "_ = ("), "README.md", "exec"), namespace)
    assert namespace["out"].result["metrics"]["rouge1"] == 1.0
