"""DLG (Zhu et al., "Deep Leakage from Gradients", NeurIPS 2019) and iDLG (Zhao et al., "iDLG:
Improved Deep Leakage from Gradients", 2020). GIA-O.

DLG optimises dummy images ``[N, C, H, W]`` and dummy soft labels ``[N, classes]`` jointly with
L-BFGS to minimise the L2 distance between gradients. iDLG first reads the label off the last
layer's gradient, then optimises the image only. Defaults: ``configs/attacks/{dlg,idlg}.yaml``.
"""

from __future__ import annotations

from gradleak.attacks import register_attack
from gradleak.attacks.base import AttackInfo
from gradleak.attacks.optimization import GradientMatchingAttack


@register_attack("dlg")
class DLG(GradientMatchingAttack):
    name = "dlg"
    info = AttackInfo(paper="Zhu et al., NeurIPS 2019", strategy="GIA-O")


@register_attack("idlg")
class IDLG(GradientMatchingAttack):
    name = "idlg"
    info = AttackInfo(paper="Zhao et al., arXiv 2020", strategy="GIA-O")
