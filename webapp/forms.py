"""The config form: one widget per `Config` field, grouped by the field's metadata `group`,
with each validation error shown under its field. Parsing and diffing are pure functions."""
from __future__ import annotations

import math

import streamlit as st

from model.config import ALL_OPS, FIELDS, field_help

GROUPS = ("task", "search space", "meta-learning", "loss", "run")
GROUP_TITLES = {
    "task": "Task — ways, shots, queries, split",
    "search space": "Search space — cells, nodes, channels, operations",
    "meta-learning": "Meta-learning — meta-learner, learning rates, steps",
    "loss": "Loss — cross-entropy or a learned FNN/LSTM loss, residual, φ update",
    "run": "Run — threads, engine, checkpoints",
}
TOP_FIELDS = ("seed", "device")  # asked above the form (seeds field, device radio)


def kind(name: str) -> str:
    t = FIELDS[name].type
    return t if isinstance(t, str) else t.__name__


def fields_by_group(skip=TOP_FIELDS) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {g: [] for g in GROUPS}
    for name in FIELDS:
        if name in skip:
            continue
        out.setdefault(field_help(name)["group"], []).append(name)
    return {g: names for g, names in out.items() if names}


def parse_int_list(text: str):
    """'1, 3' or '[1, 3]' -> [1, 3]; '' -> []; anything else is returned as typed, so the
    config's own validation names the field."""
    raw = text.strip().strip("[]").strip()
    if not raw:
        return []
    try:
        return [int(p) for p in raw.replace(",", " ").split()]
    except ValueError:
        return text


def parse_seeds(text: str) -> list[int] | str:
    """'2' -> [2]; '1, 2, 3' -> [1, 2, 3]; '1-5' -> [1..5]. An error message (str) otherwise."""
    raw = text.strip()
    if not raw:
        return "give at least one seed"
    try:
        if "-" in raw and "," not in raw:
            lo, hi = (int(p) for p in raw.split("-", 1))
            if hi < lo:
                return "a range must go up, e.g. 1-5"
            seeds = list(range(lo, hi + 1))
        else:
            seeds = [int(p) for p in raw.replace(",", " ").split()]
    except ValueError:
        return f"seeds must be integers like '2', '1, 2, 3' or '1-5', got {text!r}"
    if len(set(seeds)) != len(seeds):
        return "seeds must not repeat"
    if len(seeds) > 20:
        return f"at most 20 seeds per launch, got {len(seeds)}"
    return seeds


def overrides(values: dict, base: dict) -> dict:
    """The values that differ from the preset's config (what `submit` is given)."""
    return {k: v for k, v in values.items() if base.get(k) != v}


def help_text(name: str) -> str:
    meta = field_help(name)
    extra = ""
    if meta.get("lo") is not None:
        extra = f" Range: [{meta['lo']}, {meta['hi']}]."
    return f"{meta['help']}.{extra} Field `{name}`."


def _step(v: float) -> float:
    return 10.0 ** math.floor(math.log10(abs(v))) if v else 0.01


def field_widget(name: str, value, key: str):
    """One widget for one Config field; returns the value as the Config expects it.

    Numbers have no widget bounds on purpose: out-of-range values reach the config's
    validation, whose message then shows under the field."""
    meta, k = field_help(name), kind(name)
    label, help_ = name, help_text(name)
    if k == "bool":
        return st.checkbox(label, value=bool(value), key=key, help=help_)
    if meta.get("choices"):
        choices = list(meta["choices"])
        return st.selectbox(label, choices, index=choices.index(value) if value in choices else 0, key=key, help=help_)
    if name == "ops":
        return st.multiselect(label, list(ALL_OPS), default=[o for o in value if o in ALL_OPS], key=key, help=help_)
    if k == "list":
        text = st.text_input(label, value=", ".join(str(v) for v in value), key=key, help=help_ + " Comma-separated.")
        return parse_int_list(text)
    if k == "int":
        return int(st.number_input(label, value=int(value), step=1, format="%d", key=key, help=help_))
    if k == "float":
        return float(st.number_input(label, value=float(value), step=_step(float(value)), format="%g", key=key,
                                     help=help_))
    return st.text_input(label, value=str(value), key=key, help=help_)


def config_form(base: dict, key_prefix: str, errors: dict[str, str] | None = None) -> dict:
    """Widgets for every field but TOP_FIELDS, grouped; `errors` show under their fields.
    Returns {field: value}. Call inside an `st.form`."""
    errors = errors or {}
    values = {}
    for group, names in fields_by_group().items():
        bad = [n for n in names if n in errors]
        title = GROUP_TITLES.get(group, group) + (f" — {len(bad)} to fix" if bad else "")
        with st.expander(title, expanded=group == "task" or bool(bad)):
            cols = st.columns(3)
            for i, name in enumerate(names):
                with cols[i % 3]:
                    values[name] = field_widget(name, base[name], key=f"{key_prefix}{name}")
                    if name in errors:
                        st.error(errors[name], icon=":material/warning:")
    return values
