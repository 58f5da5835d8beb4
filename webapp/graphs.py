"""Genotype cells as Graphviz: DOT text from `model.genotypes.to_dot`, rendered with the
`dot` program (via the graphviz package) for SVG/PNG export."""
from __future__ import annotations

import graphviz

from model.genotypes import CELL_KINDS, edge_labels, to_dot

__all__ = ["CELL_KINDS", "cell_dot", "edge_labels", "render", "genotype_ops", "alpha_at"]


def cell_dot(genotype: dict, alpha: dict | None = None, cell: str = "normal") -> str:
    """DOT of one cell; edge width from softmax(α) when the α of the same epoch is given."""
    return to_dot(genotype, alpha if alpha and cell in alpha else None, cell)


def render(dot: str, fmt: str = "svg") -> bytes:
    """SVG or PNG bytes of DOT text (needs Graphviz's `dot` on PATH)."""
    return graphviz.Source(dot).pipe(format=fmt)


def genotype_ops(genotype: dict, cell: str = "normal") -> list[str]:
    """The chosen ops of a cell, in genotype order (what the graph's edge labels must be)."""
    return [op for op, _src in genotype[cell]]


def alpha_at(rows: list[dict], epoch: int) -> tuple[dict | None, dict | None]:
    """(genotype, alpha) of meta-epoch `epoch` from metrics rows."""
    for r in rows:
        if r.get("epoch") == epoch:
            return r.get("genotype"), r.get("alpha")
    return None, None
