"""Named configurations: a plain registry of {name: {"description", "config"}}.

Each preset is written out in full against the defaults in `config.py`, so a reader sees
exactly what a run used. `paper-*` follow the published run's effective settings
(../shared/paper/NOTES.md), except that the split is Vinyals (the published run used
Lake's background/evaluation split because its Vinyals option crashed).
"""
from __future__ import annotations

SMOKE = dict(
    n_way=3, k_shot=1, train_shots=2, q_query=1, inner_batch=0, test_batch=0,
    split="vinyals", rotations=False,
    channels=4, layers=2, reductions=[1], nodes=2, stem_multiplier=2, pairwise_alpha=True,
    drop_path=0.0, meta_epochs=4, meta_batch=2, inner_steps=2, test_tasks=8, test_steps=3,
    eval_chunk=8, lr_theta_task=3e-3, lr_alpha_task=3e-3, lr_theta_meta=1.0, lr_alpha_meta=0.6,
    checkpoint_every=2, threads=1,
)

DEMO = dict(
    n_way=5, k_shot=1, train_shots=10, q_query=1, inner_batch=10, test_batch=0,
    split="vinyals", rotations=True,
    channels=8, layers=3, reductions=[0, 1], nodes=2, stem_multiplier=3, pairwise_alpha=True,
    drop_path=0.0, temp_start=1.0, temp_end=0.05,
    meta_epochs=290, meta_batch=6, inner_steps=5, test_tasks=600, test_steps=25,
    eval_chunk=100, task_optimizer="adam", lr_theta_task=3e-2, lr_alpha_task=3e-2,
    lr_theta_meta=1.0, lr_alpha_meta=0.6, meta_lr_schedule="linear", checkpoint_every=50,
    threads=1, task_workers=2,   # two 1-thread processes, 3 tasks each: ~1.5x a 2-thread one here (BENCHMARKS.md)
)

PAPER = dict(
    n_way=20, k_shot=5, train_shots=15, q_query=1, inner_batch=20, test_batch=10,
    split="vinyals", rotations=True,
    channels=28, layers=4, reductions=[1, 3], nodes=3, stem_multiplier=3, pairwise_alpha=True,
    drop_path=0.2, temp_start=1.0, temp_end=0.05, prune_threshold=0.01,
    meta_learner="reptile", meta_epochs=200, meta_batch=5, inner_steps=5, test_tasks=600,
    test_steps=50, eval_chunk=20, task_optimizer="adam", adam_beta1=0.0, adam_beta2=0.999,
    alpha_weight_decay=1e-3, lr_theta_task=5e-3, lr_alpha_task=5e-3, lr_theta_meta=1.0,
    lr_alpha_meta=0.6, meta_lr_schedule="constant", seed=2, checkpoint_every=5,
    engine="loop",   # at C=28 on a CPU: plain autograd in channels-last, 1.4x the vmap engine, 1/5 its memory (BENCHMARKS.md)
)


def _paper(**changes):
    return {**PAPER, **changes}


PRESETS: dict[str, dict] = {
    "smoke": {"description": "Seconds on a CPU: a 3-way 1-shot task on a tiny supernet, for tests.", "config": SMOKE},
    "demo": {"description": "5-way 1-shot on a small supernet: ~10 minutes on 2 CPU cores, ~90% test accuracy (docs/RESULTS.md).", "config": DEMO},
    "paper-baseline": {"description": "Paper Table 1 baseline: MetaNAS, Reptile, cross-entropy, 20-way 5-shot.", "config": _paper()},
}

for _net in ("fnn", "lstm"):
    for _proxy, _pname in (("mse", "mse"), ("inner_product", "ip")):
        for _res in (False, True):
            _name = f"paper-{_net}-{_pname}" + ("-res" if _res else "")
            PRESETS[_name] = {
                "description": (
                    f"Paper Table 1: {_net.upper()} learned loss, {_proxy.replace('_', '-')} proxy, "
                    f"residual {'on' if _res else 'off'}."
                ),
                "config": _paper(loss=_net, phi_update=_proxy, loss_residual=_res),
            }

PRESETS["paper-lstm-meta"] = {
    "description": "Beyond the paper: LSTM loss whose phi learns by meta-gradient through the inner loop (ML3/SAVN).",
    "config": _paper(loss="lstm", phi_update="meta_gradient", loss_residual=True, task_optimizer="sgd",
                     lr_theta_task=0.1, lr_alpha_task=0.1),
}
PRESETS["paper-maml"] = {
    "description": "Second-order MAML (Algorithm 1) with cross-entropy, SGD task learner, Adam meta-optimizer.",
    # engine=loop: second order one task at a time, ~10 GB (vmap holds all 5 tasks' graphs, ~50 GB)
    "config": _paper(meta_learner="maml", maml_order="second", task_optimizer="sgd", lr_theta_task=0.1,
                     lr_alpha_task=0.1, lr_theta_meta=1e-3, lr_alpha_meta=1e-3, engine="loop"),
}
PRESETS["paper-resnet"] = {
    "description": "Baseline with the ResNet-18 stem (paper section 5), frozen ResNet layers.",
    "config": _paper(stem="resnet"),
}
