"""Pure data helpers of the web app (no Streamlit): the shipped demo run on disk, the
runs table, the Table-1 summary across seeds and the config diff."""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pandas as pd

DEMO_DIR = Path(__file__).resolve().parent / "demo_run"
DEMO_ID = "demo:shipped"  # pseudo run id of the shipped demo run (read from disk, not Redis)


# ---------------------------------------------------------------------------------------
# a run directory on disk (the shipped demo run)


class RunDir:
    """Read-only view of a run directory with the fields pages use from a run record."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def exists(self) -> bool:
        return (self.path / "config.json").is_file()

    def _json(self, name: str) -> dict | None:
        p = self.path / name
        return json.loads(p.read_text()) if p.is_file() else None

    def _jsonl(self, name: str) -> list[dict]:
        p = self.path / name
        if not p.is_file():
            return []
        return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]

    def config(self) -> dict:
        return self._json("config.json") or {}

    def rows(self) -> list[dict]:
        return self._jsonl("metrics.jsonl")

    def genotype(self) -> dict | None:
        return self._json("genotype.json")

    def summary(self) -> dict | None:
        return self._json("summary.json")

    def landscapes(self) -> list[dict]:
        return self._jsonl("landscapes.jsonl")

    def artifact(self, name: str) -> bytes | None:
        p = self.path / name
        return p.read_bytes() if p.is_file() else None

    def record(self) -> dict:
        cfg, summary = self.config(), self.summary()
        rows = self.rows()
        return {"id": DEMO_ID, "name": "shipped demo run", "preset": "demo", "group": None, "status": "succeeded",
                "config": cfg, "epoch": rows[-1]["epoch"] if rows else 0, "meta_epochs": cfg.get("meta_epochs"),
                "summary": summary, "worker": "(shipped)", "device": (self._json("run.json") or {}).get("device"),
                "created": None, "started": None, "finished": None}


def demo_run() -> RunDir | None:
    d = RunDir(DEMO_DIR)
    return d if d.exists() else None


# ---------------------------------------------------------------------------------------
# tables


def duration(rec: dict, now: float | None = None) -> float | None:
    start = rec.get("started")
    if not start:
        return None
    end = rec.get("finished") or (now or time.time())
    return max(0.0, end - start)


def fmt_seconds(s: float | None) -> str:
    if s is None:
        return ""
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def fmt_time(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else ""


def accuracy_stats(rows: list[dict]) -> tuple[float | None, float | None]:
    """(best, last) query accuracy over metrics rows."""
    accs = [r["train_accuracy"] for r in rows if r.get("train_accuracy") is not None]
    return (max(accs), accs[-1]) if accs else (None, None)


def runs_frame(records: list[dict], stats: dict[str, tuple] | None = None, now: float | None = None) -> pd.DataFrame:
    """The Runs table; `stats` maps run id -> (best, last) query accuracy."""
    stats = stats or {}
    out = []
    for r in records:
        total = r.get("meta_epochs") or (r.get("config") or {}).get("meta_epochs") or 0
        best, last = stats.get(r["id"], (None, None))
        summary = r.get("summary") or {}
        out.append({
            "id": r["id"], "name": r.get("name") or r["id"], "preset": r.get("preset"), "group": r.get("group") or "",
            "status": r.get("status"), "progress": (r.get("epoch") or 0) / total if total else 0.0,
            "epoch": f"{r.get('epoch') or 0}/{total}", "best acc": best, "last acc": last,
            "test acc": summary.get("test_accuracy"), "loss": (r.get("config") or {}).get("loss"),
            "worker": r.get("worker") or "", "device": r.get("device") or "",
            "started": fmt_time(r.get("started")), "duration": fmt_seconds(duration(r, now)),
        })
    cols = ["name", "preset", "group", "status", "progress", "epoch", "best acc", "last acc", "test acc",
            "loss", "worker", "device", "started", "duration", "id"]
    return pd.DataFrame(out, columns=cols)


def filter_runs(records: list[dict], statuses=None, presets=None, text: str = "") -> list[dict]:
    text = text.strip().lower()
    return [r for r in records
            if (not statuses or r.get("status") in statuses)
            and (not presets or r.get("preset") in presets)
            and (not text or text in " ".join(str(r.get(k) or "") for k in ("id", "name", "group", "submitter")).lower())]


def seed_groups(records: list[dict]) -> dict[str, list[dict]]:
    """Label -> runs: a run's seed group when it has one, else the run alone."""
    out: dict[str, list[dict]] = {}
    for r in records:
        label = f"group {r['group']}" if r.get("group") else (r.get("name") or r["id"])
        if label in out and not r.get("group"):
            label = f"{label} ({r['id']})"
        out.setdefault(label, []).append(r)
    return out


def _mean(xs):
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def table1_row(label: str, summaries: list[dict]) -> dict:
    """Test accuracy ± 95% CI (across seeds when there are several, else the run's own CI
    across test tasks), train accuracy, parameters and wall time, in the paper's units (%)."""
    accs = [s["test_accuracy"] for s in summaries if s.get("test_accuracy") is not None]
    n = len(accs)
    mean = _mean(accs)
    if n > 1:
        std = math.sqrt(sum((a - mean) ** 2 for a in accs) / (n - 1))
        ci, basis = 1.96 * std / math.sqrt(n), f"{n} seeds"
    elif n == 1:
        ci, basis = summaries[0].get("test_ci95"), f"{summaries[0].get('test_tasks', '?')} tasks"
    else:
        ci, basis = None, ""
    pct = lambda v: None if v is None else round(100 * v, 2)  # noqa: E731
    return {"runs": label, "seeds": n, "test accuracy (%)": pct(mean), "± 95% CI": pct(ci), "CI over": basis,
            "train accuracy (%)": pct(_mean([s.get("train_accuracy") for s in summaries])),
            "parameters": _mean([s.get("num_params") for s in summaries]),
            "meta-epochs": _mean([s.get("meta_epochs") for s in summaries]),
            "wall time": fmt_seconds(_mean([s.get("wall_seconds") for s in summaries]))}


def table1_frame(groups: dict[str, list[dict | None]]) -> pd.DataFrame:
    """`groups` maps a label to the summaries of its runs (None = unfinished, left out)."""
    return pd.DataFrame([table1_row(label, [s for s in sums if s]) for label, sums in groups.items()])


def config_diff(configs: dict[str, dict]) -> pd.DataFrame:
    """Fields whose values differ between the labelled configs (one column per label)."""
    keys = sorted({k for c in configs.values() for k in c if k != "schema_version"})
    rows = []
    for k in keys:
        vals = [json.dumps(c.get(k)) for c in configs.values()]
        if len(set(vals)) > 1:
            rows.append({"field": k, **{label: v for label, v in zip(configs, vals)}})
    return pd.DataFrame(rows, columns=["field", *configs])


# ---------------------------------------------------------------------------------------
# sample Omniglot tasks (Classroom), read from the data folder without torch


def omniglot_root() -> tuple[Path | None, str]:
    """(the images folder, "") or (None, how to get the data)."""
    try:
        from model.data.root import DataNotFoundError, resolve_data_root  # torch-free module
    except ImportError as e:  # pragma: no cover - the model package is part of the project
        return None, f"model.data is not importable: {e}"
    try:
        return resolve_data_root() / "omniglot-py", ""
    except DataNotFoundError as e:
        return None, str(e)


def sample_task(images: Path, n_way: int = 5, k_shot: int = 1, n_query: int = 1, seed: int = 0,
                image_set: str = "images_evaluation") -> dict:
    """A few-shot task of Omniglot characters as file paths: {"classes": [label, ...],
    "support": {label: [path, ...]}, "query": [(path, label), ...]} (query shuffled)."""
    import random

    rng = random.Random(seed)
    base = Path(images) / image_set
    alphabets = sorted(p for p in base.iterdir() if p.is_dir())
    chars = []
    while len(chars) < n_way:
        alphabet = rng.choice(alphabets)
        char = rng.choice(sorted(p for p in alphabet.iterdir() if p.is_dir()))
        if char not in chars:
            chars.append(char)
    support, query = {}, []
    for char in chars:
        label = f"{char.parent.name.replace('(', '').replace(')', '').replace('_', ' ')} {char.name}"[:64]
        drawings = rng.sample(sorted(char.glob("*.png")), k_shot + n_query)
        support[label] = drawings[:k_shot]
        query += [(p, label) for p in drawings[k_shot:]]
    rng.shuffle(query)
    return {"classes": list(support), "support": support, "query": query}
