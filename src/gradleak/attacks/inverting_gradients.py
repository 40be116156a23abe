"""Inverting Gradients (Geiping et al., "Inverting Gradients - How easy is it to break privacy in
federated learning?", NeurIPS 2020). GIA-O.

Minimises 1 - cosine similarity between the dummy gradient and the observed one over all layers
jointly, plus a total-variation prior, with Adam on the *sign* of the image gradient, a box
constraint to [0, 1] after each step and step decay x0.1 at 3/8, 5/8 and 7/8 of the run.
Restarts keep the lowest final gradient loss. Dummy images ``[N, C, H, W]``.

Against a FedAvg update: without client training details the update is treated as one gradient
step (BST; the delta is negated); with them the local SGD is simulated (WST). These are the
config defaults (``gradleak config``), so this class adds nothing to the shared engine.
"""

from __future__ import annotations

from gradleak.attacks import register_attack
from gradleak.attacks.base import AttackInfo
from gradleak.attacks.optimization import GradientMatchingAttack


@register_attack("ig")
class InvertingGradients(GradientMatchingAttack):
    name = "ig"
    info = AttackInfo(paper="Geiping et al., NeurIPS 2020", strategy="GIA-O")
