"""TAG (Deng et al., "TAG: Gradient Attack on Transformer-based Language Models", Findings of
EMNLP 2021). GIA-O on text.

Optimises the batch's input embeddings ``[N, L, d]`` so that their gradient matches the
update under the L2 + L1 distance ``sum_l ||g_l - g'_l||^2 + l1_weight * |g_l - g'_l|_1``,
then reads each position out as its nearest vocabulary embedding (the engine and the text
problem: :mod:`gradleak.attacks.text_matching`). Reconstruction: ``[N, 2, L]`` ids and mask.

Defaults (``configs/attacks/tag.yaml``), from LAMP's reimplementation (``tag.sh``): L1 weight
0.01, Adam lr 0.1 without decay, 2 500 steps, one N(0, 1) start. breaching's ``tag.yaml``
instead weights the layers linearly decaying from first to last (not done here: the layers
are weighted equally, as in LAMP's).
"""

from __future__ import annotations

from gradleak.attacks import register_attack
from gradleak.attacks.base import AttackInfo
from gradleak.attacks.text_matching import EmbeddingMatchingAttack


@register_attack("tag")
class TAG(EmbeddingMatchingAttack):
    name = "tag"
    info = AttackInfo(paper="Deng et al., Findings of EMNLP 2021", strategy="GIA-O",
                      goal="text and labels", modality="text")
