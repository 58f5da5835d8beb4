"""The one run configuration shared by the CLI, the Celery worker and the web app.

This module must import without torch: the web app and the backend validate configs with
it before anything reaches a worker. A config is a flat dataclass; `validate()` returns
{field: message} for every bad field (empty when valid), and `build_config()` raises
`ConfigError` carrying that dict.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field, fields
from typing import Any

SCHEMA_VERSION = 1

# The MetaNAS few-shot operation set, in the order the published code lists it.
FEW_SHOT_OPS = (
    "max_pool_3x3",
    "avg_pool_3x3",
    "skip_connect",
    "conv_1x5_5x1",
    "conv_3x3",
    "sep_conv_3x3",
    "dil_conv_3x3",
)
ALL_OPS = FEW_SHOT_OPS + ("sep_conv_5x5", "dil_conv_5x5", "conv_7x1_1x7")


class ConfigError(ValueError):
    """A config that cannot run. `errors` maps each bad field to a human message."""

    def __init__(self, errors: dict[str, str]):
        self.errors = dict(errors)
        super().__init__("; ".join(f"{k}: {v}" for k, v in self.errors.items()))


def _f(default, help: str, lo=None, hi=None, choices=None, group="other"):
    meta = {"help": help, "lo": lo, "hi": hi, "choices": choices, "group": group}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: json.loads(json.dumps(d)), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class Config:
    # --- task -------------------------------------------------------------------------
    n_way: int = _f(5, "classes per task", 2, 100, group="task")
    k_shot: int = _f(1, "support shots per class in meta-test tasks", 1, 19, group="task")
    train_shots: int = _f(1, "shots per class in meta-train tasks", 1, 19, group="task")
    q_query: int = _f(1, "query images per class (meta-train and meta-test)", 1, 19, group="task")
    inner_batch: int = _f(0, "images per inner step, sampled from the support set; 0 = whole support set", 0, 2000, group="task")
    test_batch: int = _f(0, "images per adaptation step at meta-test; 0 = whole support set", 0, 2000, group="task")
    split: str = _f("vinyals", "class split: vinyals (1028/172/423) or lake (background/evaluation)", choices=("vinyals", "lake"), group="task")
    rotations: bool = _f(True, "add 90/180/270-degree rotations as new classes", group="task")
    # --- search space -----------------------------------------------------------------
    channels: int = _f(28, "channels C of the supernet cells", 1, 256, group="search space")
    layers: int = _f(4, "number of cells", 1, 20, group="search space")
    reductions: list = _f([1, 3], "indices of reduction cells (empty = none)", group="search space")
    nodes: int = _f(3, "intermediate nodes per cell", 1, 8, group="search space")
    stem_multiplier: int = _f(3, "stem output channels = stem_multiplier * C", 1, 8, group="search space")
    ops: list = _f(list(FEW_SHOT_OPS), "candidate operations on every edge", group="search space")
    pairwise_alpha: bool = _f(True, "pairwise input alphas per node (MetaNAS) instead of DARTS top-2", group="search space")
    drop_path: float = _f(0.2, "drop-path probability for non-identity ops during meta-training", 0.0, 0.9, group="search space")
    temp_start: float = _f(1.0, "softmax(alpha/T) temperature at the first inner step", 1e-3, 100.0, group="search space")
    temp_end: float = _f(0.05, "temperature at the last inner step (annealed linearly)", 1e-3, 100.0, group="search space")
    prune_threshold: float = _f(0.01, "ops with softmax weight <= threshold are skipped (0 = off)", 0.0, 0.5, group="search space")
    stem: str = _f("conv", "stem: conv (conv3x3+BN) or resnet (frozen ResNet-18 layers)", choices=("conv", "resnet"), group="search space")
    resnet_weights: str = _f("", "local path of ResNet-18 weights (.pth); empty = random init", group="search space")
    resnet_trainable: bool = _f(False, "adapt the ResNet layers per task", group="search space")
    bn_mode: str = _f("transductive", "BatchNorm statistics at query time", choices=("transductive", "support_stats"), group="search space")
    # --- meta-learning ----------------------------------------------------------------
    meta_learner: str = _f("reptile", "meta-learner", choices=("reptile", "maml"), group="meta-learning")
    maml_order: str = _f("second", "MAML: differentiate through the inner loop (second) or not (first)", choices=("first", "second"), group="meta-learning")
    meta_epochs: int = _f(200, "meta-epochs (one meta-batch of tasks each)", 1, 100000, group="meta-learning")
    meta_batch: int = _f(5, "tasks per meta-epoch", 1, 256, group="meta-learning")
    inner_steps: int = _f(5, "task-learner steps K in meta-training", 1, 100, group="meta-learning")
    task_optimizer: str = _f("adam", "task-learner optimizer (fresh state per task)", choices=("adam", "sgd"), group="meta-learning")
    adam_beta1: float = _f(0.0, "task Adam beta1", 0.0, 0.999, group="meta-learning")
    adam_beta2: float = _f(0.999, "task Adam beta2", 0.0, 0.99999, group="meta-learning")
    alpha_weight_decay: float = _f(1e-3, "L2 weight decay on alpha in the task learner", 0.0, 1.0, group="meta-learning")
    lr_theta_task: float = _f(5e-3, "task-learner learning rate for weights theta", 0.0, 10.0, group="meta-learning")
    lr_alpha_task: float = _f(5e-3, "task-learner learning rate for architecture alpha", 0.0, 10.0, group="meta-learning")
    lr_theta_meta: float = _f(1.0, "meta learning rate for theta", 0.0, 10.0, group="meta-learning")
    lr_alpha_meta: float = _f(0.6, "meta learning rate for alpha", 0.0, 10.0, group="meta-learning")
    meta_lr_schedule: str = _f("constant", "meta learning rates over meta-epochs", choices=("constant", "linear"), group="meta-learning")
    test_tasks: int = _f(600, "meta-test tasks for the final evaluation", 1, 100000, group="meta-learning")
    test_steps: int = _f(50, "adaptation steps at meta-test", 0, 1000, group="meta-learning")
    eval_chunk: int = _f(50, "meta-test tasks adapted together", 1, 4096, group="meta-learning")
    # --- learned loss (LAMANAS) -------------------------------------------------------
    loss: str = _f("ce", "task loss: ce (cross-entropy), fnn or lstm (learned)", choices=("ce", "fnn", "lstm"), group="loss")
    loss_residual: bool = _f(True, "add the batch cross-entropy to the loss network's first layer", group="loss")
    loss_hidden: int = _f(64, "hidden width H of the loss network", 2, 1024, group="loss")
    lstm_layers: int = _f(5, "stacked LSTM layers", 1, 10, group="loss")
    lstm_state: str = _f("per_step", "LSTM state: re-initialised per inner step, or carried across steps", choices=("per_step", "across_steps"), group="loss")
    elu_alpha: float = _f(1.0, "ELU alpha of the loss network", 0.0, 10.0, group="loss")
    phi_update: str = _f("mse", "how phi learns: mse, inner_product or meta_gradient", choices=("mse", "inner_product", "meta_gradient"), group="loss")
    lr_phi: float = _f(1e-3, "learning rate of phi", 0.0, 10.0, group="loss")
    lr_phi_meta: float = _f(1.0, "Reptile meta learning rate for phi", 0.0, 10.0, group="loss")
    ip_lambda: float = _f(1.0, "inner-product proxy weight on theta gradients", 0.0, 100.0, group="loss")
    ip_xi: float = _f(1.0, "inner-product proxy weight on alpha gradients", 0.0, 100.0, group="loss")
    ip_normalize: str = _f("cosine", "inner-product proxy: cosine (bounded) or none (paper)", choices=("cosine", "none"), group="loss")
    ip_ce_on: str = _f("query", "cross-entropy set of the inner-product proxy", choices=("query", "support"), group="loss")
    landscape_every: int = _f(0, "store a loss-landscape snapshot every M meta-epochs (0 = off)", 0, 100000, group="loss")
    landscape_mode: str = _f("svd", "landscape plane: svd directions or two logit coordinates", choices=("svd", "coords"), group="loss")
    landscape_grid: int = _f(25, "landscape grid points per axis", 3, 101, group="loss")
    # --- run --------------------------------------------------------------------------
    seed: int = _f(2, "random seed", 0, 2**31 - 1, group="run")
    threads: int = _f(0, "torch CPU threads (0 = torch default)", 0, 256, group="run")
    device: str = _f("auto", "auto, cpu or cuda", choices=("auto", "cpu", "cuda"), group="run")
    task_workers: int = _f(1, "processes adapting a meta-batch's tasks side by side, each with `threads` torch threads (1 = this process only)", 1, 64, group="run")
    engine: str = _f("vmap", "vmap (tasks of a meta-batch together) or loop (one task at a time)", choices=("vmap", "loop"), group="run")
    checkpoint_every: int = _f(5, "meta-epochs between checkpoints", 1, 100000, group="run")

    # ---------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def validate(self) -> dict[str, str]:
        errors: dict[str, str] = {}
        for f in fields(self):
            msg = _check_field(f, getattr(self, f.name))
            if msg:
                errors[f.name] = msg
        if errors:  # cross-field rules need well-typed fields
            return errors
        return _check_combinations(self)

    @property
    def arch_only_fields(self) -> tuple[str, ...]:
        return ("channels", "layers", "reductions", "nodes", "stem_multiplier", "ops", "pairwise_alpha", "stem")


FIELD_NAMES = tuple(f.name for f in fields(Config))
FIELDS = {f.name: f for f in fields(Config)}


def field_help(name: str) -> dict[str, Any]:
    """Help text, bounds, choices and group of one field (for the UI and `presets`)."""
    return dict(FIELDS[name].metadata)


def _type_name(t) -> str:
    return t if isinstance(t, str) else t.__name__


def _check_field(f: dataclasses.Field, value: Any) -> str | None:
    kind = _type_name(f.type)
    meta = f.metadata
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            return f"must be an integer, got {value!r}"
    elif kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return f"must be a finite number, got {value!r}"
    elif kind == "bool":
        if not isinstance(value, bool):
            return f"must be true or false, got {value!r}"
    elif kind == "str":
        if not isinstance(value, str):
            return f"must be a string, got {value!r}"
    elif kind == "list":
        if not isinstance(value, list):
            return f"must be a list, got {value!r}"
    lo, hi, choices = meta.get("lo"), meta.get("hi"), meta.get("choices")
    if lo is not None and not (lo <= value <= hi):
        return f"must be in [{lo}, {hi}], got {value!r}"
    if choices is not None and value not in choices:
        return f"must be one of {', '.join(choices)}; got {value!r}"
    return None


def _check_combinations(c: Config) -> dict[str, str]:
    e: dict[str, str] = {}
    if not c.ops:
        e["ops"] = "must name at least one operation"
    bad = [op for op in c.ops if op not in ALL_OPS]
    if bad:
        e["ops"] = f"unknown op {bad[0]!r}; allowed: {', '.join(ALL_OPS)}"
    elif len(set(c.ops)) != len(c.ops):
        e["ops"] = "must not repeat an operation"
    if any(isinstance(r, bool) or not isinstance(r, int) or not 0 <= r < c.layers for r in c.reductions):
        e["reductions"] = f"must be distinct cell indices in [0, {c.layers - 1}], got {c.reductions!r}"
    elif len(set(c.reductions)) != len(c.reductions):
        e["reductions"] = "must not repeat a cell index"
    # Omniglot has 20 drawings per character: support + query must fit in them.
    if c.k_shot + c.q_query > 20:
        e["q_query"] = f"k_shot + q_query must be <= 20 (drawings per character), got {c.k_shot}+{c.q_query}"
    if c.train_shots + c.q_query > 20:
        e["train_shots"] = f"train_shots + q_query must be <= 20 (drawings per character), got {c.train_shots}+{c.q_query}"
    if c.temp_end > c.temp_start:
        e["temp_end"] = f"must be <= temp_start ({c.temp_start}), got {c.temp_end}"
    if c.pairwise_alpha and c.nodes < 1:
        e["nodes"] = "pairwise_alpha needs at least one node"
    if c.phi_update == "meta_gradient" and c.loss == "ce":
        e["phi_update"] = "meta_gradient learns a loss network: set loss to fnn or lstm"
    if c.phi_update == "meta_gradient" and c.meta_learner == "maml" and c.maml_order == "first":
        e["phi_update"] = "meta_gradient differentiates through the inner loop: it cannot go with first-order MAML"
    differentiable = (c.meta_learner == "maml" and c.maml_order == "second") or (
        c.loss != "ce" and c.phi_update == "meta_gradient"
    )
    if differentiable and c.task_optimizer != "sgd":
        e["task_optimizer"] = (
            "second-order MAML and meta_gradient differentiate through the inner loop and need sgd "
            "(Adam with beta1=0 takes sign-like steps whose derivative is ~0)"
        )
    if c.lstm_state == "across_steps" and c.loss != "lstm":
        e["lstm_state"] = "across_steps applies to loss=lstm only"
    if c.stem == "resnet" and c.resnet_weights and not c.resnet_weights.endswith((".pth", ".pt")):
        e["resnet_weights"] = "must be a local .pth/.pt file path"
    if c.stem != "resnet" and c.resnet_weights:
        e["resnet_weights"] = "applies to stem=resnet only"
    if c.stem != "resnet" and c.resnet_trainable:
        e["resnet_trainable"] = "applies to stem=resnet only"
    return e


# --------------------------------------------------------------------------------------
# construction helpers


def config_from_dict(d: dict[str, Any], base: Config | None = None) -> Config:
    """Overlay `d` on `base` (default values when None); unknown keys are refused."""
    if not isinstance(d, dict):
        raise ConfigError({"config": f"must be a JSON object, got {type(d).__name__}"})
    unknown = [k for k in d if k not in FIELDS]
    if unknown:
        raise ConfigError({k: f"unknown field; known fields: {', '.join(FIELD_NAMES)}" for k in unknown})
    values = (base or Config()).to_dict()
    for k, v in d.items():
        # JSON gives 1 for 1.0: accept integers for float fields.
        if _type_name(FIELDS[k].type) == "float" and isinstance(v, int) and not isinstance(v, bool):
            v = float(v)
        values[k] = v
    cfg = Config.__new__(Config)
    cfg.__dict__.update(values)
    return cfg


def parse_set(items: list[str]) -> dict[str, Any]:
    """`key=value` strings to a dict; a value is parsed as JSON, else kept as a string."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError({"--set": f"expected key=value, got {item!r}"})
        key, raw = item.split("=", 1)
        try:
            out[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            out[key.strip()] = raw
    return out


def build_config(preset: str | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Preset + overrides, validated. Raises ConfigError naming every bad field."""
    from .presets import PRESETS  # local: presets imports this module

    if preset is not None and preset not in PRESETS:
        raise ConfigError({"preset": f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}"})
    base = config_from_dict(PRESETS[preset]["config"]) if preset else Config()
    cfg = config_from_dict(overrides or {}, base)
    errors = cfg.validate()
    if errors:
        raise ConfigError(errors)
    return cfg


# Fields a re-evaluation may change: they shape meta-test only, never the trained parameters.
EVAL_FIELDS = ("test_steps", "test_batch", "q_query", "eval_chunk", "task_workers", "threads", "device")
EVAL_PARTS = ("test", "val")


def eval_config(trained: Config | dict, part: str = "test", overrides: dict[str, Any] | None = None,
                tasks: int | None = None) -> Config:
    """A trained run's config with meta-test `overrides`, validated (ConfigError names each
    bad field); `part` is the split part to score, `tasks` (None = the run's test_tasks) how
    many tasks, within test_tasks' range. Other fields would not match the checkpoint."""
    overrides = overrides or {}
    errors = {k: f"cannot change at evaluation; only {', '.join(EVAL_FIELDS)} can"
              for k in sorted(set(overrides) - set(EVAL_FIELDS))}
    base = trained.to_dict() if isinstance(trained, Config) else dict(trained)
    if part not in EVAL_PARTS:
        errors["part"] = f"must be one of {', '.join(EVAL_PARTS)}, got {part!r}"
    elif part == "val" and base.get("split") == "lake":   # the data module refuses it too, but needs the data
        errors["part"] = "the lake split has no val part; use split vinyals or part test"
    if tasks is not None and (msg := _check_field(FIELDS["test_tasks"], tasks)):
        errors["tasks"] = msg
    if errors:
        raise ConfigError(errors)
    return build_config(None, {**base, **overrides, **({} if tasks is None else {"test_tasks": tasks})})


def load_config_json(text: str) -> Config:
    data = json.loads(text)
    data.pop("schema_version", None)
    cfg = config_from_dict(data)
    errors = cfg.validate()
    if errors:
        raise ConfigError(errors)
    return cfg
