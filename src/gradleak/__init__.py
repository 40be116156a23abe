"""gradleak: how much of a client's private data can a server reconstruct from its FL update?

Implements the systematization and evaluation of "SoK: On Gradient Leakage in Federated Learning".
"""

from gradleak.errors import GradleakError

__version__ = "0.1.0"
__all__ = ["GradleakError", "__version__"]
