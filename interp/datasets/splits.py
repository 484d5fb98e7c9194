"""Deterministic, optionally stratified train/test splits of any records."""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Callable, Hashable, Iterable
from typing import TypeVar

T = TypeVar("T")


def train_test_split(
    records: Iterable[T],
    test_fraction: float = 0.25,
    seed: int = 0,
    stratify: Callable[[T], Hashable] | None = None,
) -> tuple[list[T], list[T]]:
    """Split `records` into (train, test), deterministically for a given `seed`.

    `round(test_fraction * n)` records go to test (per group when `stratify` maps each record to
    a group key, e.g. `lambda p: p.category`). Both parts keep the records' original order.
    """
    if not 0.0 <= test_fraction <= 1.0:
        raise ValueError(f"test_fraction must be in [0, 1], got {test_fraction}")
    items = list(records)
    groups: dict[Hashable, list[int]] = defaultdict(list)
    for index, item in enumerate(items):
        groups[stratify(item) if stratify is not None else None].append(index)
    rng = random.Random(seed)
    test_indices: set[int] = set()
    for key in sorted(groups, key=repr):
        members = list(groups[key])
        rng.shuffle(members)
        test_indices.update(members[: round(test_fraction * len(members))])
    train = [item for i, item in enumerate(items) if i not in test_indices]
    test = [item for i, item in enumerate(items) if i in test_indices]
    return train, test
