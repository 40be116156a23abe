"""The README's Python examples run as written (tiny budgets)."""

from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_own_module_and_dataset_example_runs():
    blocks = [b.split("```", 1)[0] for b in README.read_text().split("```python\n")[1:]]
    (example,) = [b for b in blocks if "Scenario.from_config(" in b and "TensorDataset" in b]
    assert len(example.strip().splitlines()) <= 12
    code = example.replace("attack.iterations=300", "attack.iterations=5").replace("print(", "_ = (")
    exec(compile(code, "README.md", "exec"), {})
