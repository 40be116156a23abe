"""GradInversion (Yin et al., "See through Gradients: Image Batch Recovery via GradInversion",
CVPR 2021). GIA-O.

Gradient matching (L2, scaled) plus a BN-statistics prior that matches each BN layer's dummy
batch mean and variance to the client's batch statistics (the paper's level-4 knowledge; with
``attack.bn_source=running`` the model's running statistics are used instead), TV and image-norm
priors, and Yin's label rule. Defaults: ``configs/attacks/gradinversion.yaml``. Group consistency
(``attack.group=K``, weight ``attack.group_weight``) lives in the shared engine: K members per
restart are pulled towards their pixel mean (no RANSAC-flow registration, see
:func:`gradleak.attacks.priors.group_consistency`).
"""

from __future__ import annotations

from gradleak.attacks import register_attack
from gradleak.attacks.base import AttackInfo
from gradleak.attacks.optimization import GradientMatchingAttack


@register_attack("gradinversion")
class GradInversion(GradientMatchingAttack):
    name = "gradinversion"
    info = AttackInfo(paper="Yin et al., CVPR 2021", strategy="GIA-O")
