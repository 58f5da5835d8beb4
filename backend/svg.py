"""genotype.svg (normal cell) and genotype_reduce.svg beside genotype.json, via Graphviz.

Rendering is a convenience: a missing `dot` binary or DOT helper only loses the pictures.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

SVG_OF_CELL = {"normal": "genotype.svg", "reduce": "genotype_reduce.svg"}


def dot_to_svg(dot: str) -> bytes:
    import graphviz

    return graphviz.Source(dot).pipe(format="svg")


def render_genotype_svg(run_dir) -> list[str]:
    """Write the SVGs of the run's genotype; returns the file names written."""
    run_dir = Path(run_dir)
    written = []
    try:
        from model.genotypes import to_dot

        genotype = json.loads((run_dir / "genotype.json").read_text())
        for cell, name in SVG_OF_CELL.items():
            if not genotype.get(cell):
                continue
            tmp = run_dir / f".{name}.tmp{os.getpid()}"
            tmp.write_bytes(dot_to_svg(to_dot(genotype, None, cell=cell)))
            os.replace(tmp, run_dir / name)
            written.append(name)
    except Exception as e:  # ImportError, FileNotFoundError, graphviz.ExecutableNotFound, ...
        log.warning("no genotype SVG for %s: %s: %s", run_dir, type(e).__name__, e)
    return written
