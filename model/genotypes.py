"""Genotypes: the discrete architecture read off α, as plain JSON data.

A genotype follows the DARTS convention: `{"normal": [[op, src], ...], "normal_concat":
[2, ...], "reduce": [...], "reduce_concat": [...]}` with two entries per intermediate
node; src 0 = c_{k-2}, 1 = c_{k-1}, j >= 2 = intermediate node j-2. It is stored as JSON
and read back with `json` only (the published code `eval`s genotype strings).

This module imports no torch at module level: the web app draws genotypes with it.
"""
from __future__ import annotations

import json
from itertools import combinations

CELL_KINDS = ("normal", "reduce")


def _pairs(node: int):
    return list(combinations(range(node + 2), 2))


def derive(alpha: dict, pairwise: bool) -> dict:
    """Genotype from the softmax weights in a metrics `alpha` dict (see alpha_summary).

    Pairwise α (MetaNAS): the argmax input pair per node, then the argmax op per chosen
    input. Otherwise DARTS: the two inputs whose best op weighs most.
    """
    ops = alpha["ops"]
    out: dict = {}
    for kind in CELL_KINDS:
        edges = alpha[kind]
        cell, e = [], 0
        node = 0
        while e < len(edges):
            n_in = node + 2
            rows = edges[e : e + n_in]
            if pairwise:
                pw = alpha[f"{kind}_pairs"][node]
                best = max(range(len(pw)), key=lambda p: pw[p])
                chosen = list(_pairs(node)[best])
            else:
                strength = [max(r) for r in rows]
                chosen = sorted(sorted(range(n_in), key=lambda i: -strength[i])[:2])
            for i in chosen:
                row = rows[i]
                cell.append([ops[max(range(len(row)), key=lambda o: row[o])], i])
            e += n_in
            node += 1
        out[kind] = cell
        out[f"{kind}_concat"] = list(range(2, 2 + node))
    return out


def to_json(genotype: dict) -> str:
    return json.dumps(genotype, indent=2)


def from_json(text: str) -> dict:
    g = json.loads(text)
    validate(g)
    return g


def validate(g: dict) -> None:
    for kind in CELL_KINDS:
        if kind not in g or f"{kind}_concat" not in g:
            raise ValueError(f"genotype lacks '{kind}' or '{kind}_concat'")
        cell = g[kind]
        if len(cell) % 2:
            raise ValueError(f"genotype '{kind}' must have two entries per node")
        for k, entry in enumerate(cell):
            if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], str) and isinstance(entry[1], int)):
                raise ValueError(f"genotype '{kind}'[{k}] must be [op_name, input_index], got {entry!r}")
            if not 0 <= entry[1] < k // 2 + 2:
                raise ValueError(f"genotype '{kind}'[{k}] reads input {entry[1]}, which node {k // 2} cannot see")


def node_label(src: int) -> str:
    return {0: "c_{k-2}", 1: "c_{k-1}"}.get(src, str(src - 2))


def to_dot(genotype: dict, alpha: dict | None = None, cell: str = "normal") -> str:
    """Graphviz DOT text of one cell, DARTS style; edge width from softmax(α) when given."""
    entries = genotype[cell]
    n_nodes = len(entries) // 2
    weights = _chosen_weights(genotype, alpha, cell) if alpha else None
    lines = [
        f'digraph "{cell}" {{',
        '  rankdir=LR; node [style="filled,rounded", shape=box, fontname="Helvetica", fontsize=14];',
        '  edge [fontname="Helvetica", fontsize=11];',
        '  "c_{k-2}" [fillcolor=darkseagreen2]; "c_{k-1}" [fillcolor=darkseagreen2];',
    ]
    lines += [f'  "{j}" [fillcolor=lightblue];' for j in range(n_nodes)]
    lines.append('  "c_{k}" [fillcolor=palegoldenrod];')
    for k, (op, src) in enumerate(entries):
        attrs = f'label="{op}"'
        if weights is not None:
            w = weights[k]
            attrs += f', penwidth={0.5 + 4.5 * w:.2f}, tooltip="{op}: {w:.3f}"'
        lines.append(f'  "{node_label(src)}" -> "{k // 2}" [{attrs}];')
    for j in genotype[f"{cell}_concat"]:
        lines.append(f'  "{node_label(j)}" -> "c_{{k}}" [color=gray];')
    lines.append("}")
    return "\n".join(lines)


def _chosen_weights(genotype: dict, alpha: dict, cell: str) -> list[float]:
    """softmax(α) weight of each chosen (op, input) edge."""
    ops = alpha["ops"]
    edges = alpha[cell]
    out = []
    for k, (op, src) in enumerate(genotype[cell]):
        node = k // 2
        first_edge = sum(j + 2 for j in range(node))
        out.append(float(edges[first_edge + src][ops.index(op)]) if op in ops else 0.0)
    return out


def edge_labels(dot: str) -> list[str]:
    """Op labels of the op edges in DOT text (for tests and the UI)."""
    import re

    return re.findall(r'-> "\d+" \[label="([^"]+)"', dot)
