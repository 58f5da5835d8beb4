"""Seeded N-way K-shot tasks from one part of a class split.

A task depends on (seed, epoch, index, part) alone, never on what was sampled before, so a
run resumed from a checkpoint at epoch e draws exactly the tasks it would have drawn.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .omniglot import Omniglot

PART_CODES = {"train": 0, "val": 1, "test": 2}
ROTATIONS = 4  # 0, 90, 180, 270 degrees (np.rot90's k, counter-clockwise)


@dataclass
class Task:
    """One task. Label j is `classes[j]` = (base class id, rotation k); images are grouped
    by label (label 0's shots first). `*_index` are the dataset image indices."""

    support_x: torch.Tensor  # float32 (n*k, 1, S, S) in [0, 1], strokes = 1
    support_y: torch.Tensor  # int64 (n*k,)
    query_x: torch.Tensor  # float32 (n*q, 1, S, S)
    query_y: torch.Tensor  # int64 (n*q,)
    classes: list[tuple[int, int]]
    support_index: np.ndarray
    query_index: np.ndarray


@dataclass
class TaskBatch:
    """Tasks stacked along a leading task dimension T (for vmapped engines)."""

    support_x: torch.Tensor  # (T, n*k, 1, S, S)
    support_y: torch.Tensor  # (T, n*k)
    query_x: torch.Tensor  # (T, n*q, 1, S, S)
    query_y: torch.Tensor  # (T, n*q)
    classes: list[list[tuple[int, int]]]
    support_index: np.ndarray  # (T, n*k)
    query_index: np.ndarray  # (T, n*q)

    def __len__(self) -> int:
        return len(self.classes)


def _check_count(name: str, value, lo: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo:
        raise ValueError(f"{name} must be an integer >= {lo}, got {value!r}")


class TaskSampler:
    def __init__(
        self,
        data: Omniglot,
        split: str,
        part: str,
        n_way: int,
        k_shot: int,
        q_query: int,
        rotations: bool = True,
        seed: int = 0,
    ):
        _check_count("n_way", n_way, 1)
        _check_count("k_shot", k_shot, 1)
        _check_count("q_query", q_query, 0)
        _check_count("seed", seed, 0)
        if not isinstance(rotations, bool):
            raise ValueError(f"rotations must be true or false, got {rotations!r}")
        base = data.class_ids(split, part)  # validates split and part
        rotation_set = range(ROTATIONS) if rotations else range(1)
        # The class set: every base class, and with rotations each of its 4 turns.
        self.class_set: list[tuple[int, int]] = [(c, r) for c in base for r in rotation_set]
        if n_way > len(self.class_set):
            what = f"{len(base)} base classes x {ROTATIONS} rotations" if rotations else f"{len(base)} classes"
            raise ValueError(
                f"n_way={n_way} exceeds the {len(self.class_set)} classes of the {split} {part} split ({what})"
            )
        drawings = min(len(data.class_images[c]) for c in base)
        if k_shot + q_query > drawings:
            raise ValueError(
                f"k_shot + q_query = {k_shot}+{q_query} exceeds the {drawings} drawings per class "
                f"(support and query images must be distinct)"
            )
        self.data, self.split, self.part = data, split, part
        self.n_way, self.k_shot, self.q_query = int(n_way), int(k_shot), int(q_query)
        self.rotations, self.seed = rotations, int(seed)

    def _pixels(self, index: np.ndarray, rotation: np.ndarray) -> torch.Tensor:
        images = self.data.images[index]  # (m, S, S) uint8, a copy
        for k in range(1, ROTATIONS):
            turn = rotation == k
            if turn.any():
                images[turn] = np.rot90(images[turn], k, axes=(1, 2))
        # Same float32 division as preprocess_image, so user images match training pixels.
        return torch.from_numpy(images.astype(np.float32) / 255).unsqueeze(1)

    def task(self, epoch: int, index: int) -> Task:
        _check_count("epoch", epoch, 0)
        _check_count("index", index, 0)
        rng = np.random.default_rng([self.seed, int(epoch), int(index), PART_CODES[self.part]])
        picked = rng.choice(len(self.class_set), size=self.n_way, replace=False)
        classes = [self.class_set[i] for i in picked]
        k, q = self.k_shot, self.q_query
        support, query = [], []
        for base, _ in classes:
            drawn = rng.choice(self.data.class_images[base], size=k + q, replace=False)
            support.append(drawn[:k])
            query.append(drawn[k:])
        support_index = np.concatenate(support).astype(np.int64)
        query_index = np.concatenate(query).astype(np.int64)
        turns = np.array([r for _, r in classes], dtype=np.int64)
        return Task(
            support_x=self._pixels(support_index, np.repeat(turns, k)),
            support_y=torch.arange(self.n_way, dtype=torch.int64).repeat_interleave(k),
            query_x=self._pixels(query_index, np.repeat(turns, q)),
            query_y=torch.arange(self.n_way, dtype=torch.int64).repeat_interleave(q),
            classes=classes,
            support_index=support_index,
            query_index=query_index,
        )

    def tasks(self, epoch: int, indices) -> TaskBatch:
        """The tasks (epoch, i) for i in `indices`, stacked; each equals `task(epoch, i)`."""
        batch = [self.task(epoch, i) for i in indices]
        if not batch:
            raise ValueError("indices must name at least one task")
        return TaskBatch(
            support_x=torch.stack([t.support_x for t in batch]),
            support_y=torch.stack([t.support_y for t in batch]),
            query_x=torch.stack([t.query_x for t in batch]),
            query_y=torch.stack([t.query_y for t in batch]),
            classes=[t.classes for t in batch],
            support_index=np.stack([t.support_index for t in batch]),
            query_index=np.stack([t.query_index for t in batch]),
        )
