"""Splitting a dataset's indices over K federated clients: IID or Dirichlet(alpha) label skew.

The paper's Sec. 6 setting (App. B iii) is a pool of 99 normal clients plus one victim client
holding its own few samples; :func:`partition_indices` expresses it by giving the victim (client
0) explicit indices and splitting every other index over clients 1..K-1.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from gradleak.errors import GradleakError


def iid_partition(indices: Sequence[int], num_clients: int, *, seed: int) -> list[list[int]]:
    """Shuffle ``indices`` with ``seed`` and cut them into ``num_clients`` near-equal parts
    (sizes differ by at most one). Each part is returned sorted."""
    _check_clients(num_clients)
    rng = np.random.default_rng(seed)
    shuffled = rng.permutation(np.asarray(indices, dtype=np.int64))
    return [sorted(part.tolist()) for part in np.array_split(shuffled, num_clients)]


def dirichlet_partition(indices: Sequence[int], labels: Sequence[int], num_clients: int, *,
                        alpha: float, seed: int) -> list[list[int]]:
    """Label-skewed split (Hsu et al. 2019): for every class, client shares p ~ Dir(alpha * 1_K)
    and the class's shuffled samples are cut at the cumulative shares.

    ``labels[j]`` is the label of ``indices[j]``. Small ``alpha`` (e.g. 0.1) gives clients few
    classes; large ``alpha`` approaches IID. Clients may end up empty. Each part is sorted.
    """
    _check_clients(num_clients)
    if not alpha > 0:
        raise GradleakError(f"bad value {alpha!r} for fl.alpha: must be > 0")
    idx = np.asarray(indices, dtype=np.int64)
    lab = np.asarray(labels, dtype=np.int64)
    if idx.shape != lab.shape:
        raise ValueError(f"indices ({idx.shape}) and labels ({lab.shape}) differ in length")
    rng = np.random.default_rng(seed)
    parts: list[list[int]] = [[] for _ in range(num_clients)]
    for c in np.unique(lab):
        members = rng.permutation(idx[lab == c])
        shares = rng.dirichlet(np.full(num_clients, float(alpha)))
        cuts = np.round(np.cumsum(shares)[:-1] * len(members)).astype(np.int64)
        for k, piece in enumerate(np.split(members, cuts)):
            parts[k] += piece.tolist()
    return [sorted(p) for p in parts]


def partition_indices(labels: Sequence[int], num_clients: int, *, scheme: str = "iid",
                      alpha: float = 0.5, seed: int = 0,
                      victim_indices: Sequence[int] | None = None) -> list[list[int]]:
    """Assign every index of a dataset with ``labels`` (index order) to one of ``num_clients``.

    Without ``victim_indices`` all indices are split by ``scheme`` (``"iid"`` or ``"dirichlet"``).
    With them, client 0 is the victim and holds exactly ``victim_indices`` (in that order); the
    remaining indices are split over clients 1..K-1 (left unassigned only when K = 1). Returns
    one index list per client; together they cover each assigned index exactly once.
    """
    _check_clients(num_clients)
    total = len(labels)
    if victim_indices is None:
        pool = list(range(total))
        return _split(pool, labels, num_clients, scheme, alpha, seed)
    victim = [int(i) for i in victim_indices]
    if len(set(victim)) != len(victim):
        raise GradleakError("the victim's indices must be distinct")
    if any(not 0 <= i < total for i in victim):
        raise GradleakError(f"victim indices must lie in 0-{total - 1}")
    taken = set(victim)
    pool = [i for i in range(total) if i not in taken]
    if num_clients == 1:
        return [victim]
    return [victim] + _split(pool, labels, num_clients - 1, scheme, alpha, seed)


def label_histogram(parts: Sequence[Sequence[int]], labels: Sequence[int],
                    num_classes: int) -> np.ndarray:
    """``[K, classes]`` counts of each label per client (to inspect a partition's skew)."""
    lab = np.asarray(labels, dtype=np.int64)
    out = np.zeros((len(parts), num_classes), dtype=np.int64)
    for k, part in enumerate(parts):
        if len(part):
            out[k] = np.bincount(lab[np.asarray(part, dtype=np.int64)], minlength=num_classes)
    return out


def _split(pool: list[int], labels: Sequence[int], num_clients: int, scheme: str, alpha: float,
           seed: int) -> list[list[int]]:
    if scheme == "iid":
        return iid_partition(pool, num_clients, seed=seed)
    if scheme == "dirichlet":
        return dirichlet_partition(pool, [labels[i] for i in pool], num_clients, alpha=alpha,
                                   seed=seed)
    raise GradleakError(f"bad value {scheme!r} for fl.partition; allowed: iid, dirichlet")


def _check_clients(num_clients: int) -> None:
    if num_clients < 1:
        raise GradleakError(f"bad value {num_clients!r} for fl.clients: must be >= 1")
