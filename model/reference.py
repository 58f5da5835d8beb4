"""The reference path: a plain, per-task `nn.Module` + `torch.optim` Reptile meta-epoch.

Kept for tests, never for speed. It shares nothing with the fast engine
(model.task_learner) except the module definitions and the keyed random draws
(`TaskLearner.draw`: inner-batch indices and drop-path masks keyed on
(seed, epoch, task, step)), so the fast engine must reproduce its updates on the same seed
and tasks. Per task: deep-copy the supernet, set its parameters to the meta-parameters,
take K steps of torch.optim.Adam (or SGD) on the cross-entropy of that step's inner batch
at that step's temperature, with α weight decay as an L2 term; then score the queries and
move the meta-parameters toward the mean of the adapted ones (Reptile).
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from .supernet import SuperNet, is_arch
from .task_learner import TaskLearner, temperatures


def _optimizer(cfg, net):
    theta = [p for n, p in net.named_parameters() if not is_arch(n)]
    alpha = [p for n, p in net.named_parameters() if is_arch(n)]
    groups = [{"params": theta, "lr": cfg.lr_theta_task},
              {"params": alpha, "lr": cfg.lr_alpha_task, "weight_decay": cfg.alpha_weight_decay}]
    if cfg.task_optimizer == "sgd":
        return torch.optim.SGD(groups)
    return torch.optim.Adam(groups, betas=(cfg.adam_beta1, cfg.adam_beta2), eps=1e-8)


def task_module(net: SuperNet, params: dict | None = None) -> SuperNet:
    """A deep copy of `net` holding `params` (default: its own), soft pruning by weight."""
    m = copy.deepcopy(net)
    if params is not None:
        with torch.no_grad():
            for n, p in m.named_parameters():
                p.copy_(params[n])
    return m


def adapt_task(net: SuperNet, cfg, x, y, steps: int, *, params: dict | None = None, key: tuple = (0, 0),
               task_id: int = 0, batch: int = 0, drop_p: float = 0.0, return_module: bool = False):
    """Φ_K on one task with torch.optim on a deep-copied nn.Module. x: (S, C, H, W), y: (S,).
    Inner batches and drop-path masks come from TaskLearner.draw(key, [task_id], step, ...)."""
    m = task_module(net, params)
    drawer = TaskLearner(m, cfg)
    opt = _optimizer(cfg, m)
    for s, temp in enumerate(temperatures(cfg, steps)):
        idx, mask = drawer.draw(key, [task_id], s, x.shape[0], batch, drop_p, x.device)
        opt.zero_grad()
        logits = m(x[idx[0]], temp=temp, drop_mask=None if mask is None else mask[0])
        F.cross_entropy(logits, y[idx[0]]).backward()
        opt.step()
    adapted = {n: p.detach().clone() for n, p in m.named_parameters()}
    return (adapted, m) if return_module else adapted


@torch.no_grad()
def query_logits(m: SuperNet, cfg, support_x, query_x, temp: float):
    if cfg.bn_mode == "support_stats":
        S = support_x.shape[0]
        return m(torch.cat([support_x, query_x]), temp=temp, stats_from=S)[S:]
    return m(query_x, temp=temp)


def reptile_epoch(net: SuperNet, meta: dict, batch, cfg, epoch: int):
    """One Reptile meta-epoch, one task at a time. Returns (new meta, adapted per task
    (list of dicts), metrics {train_loss, train_accuracy})."""
    from .train import meta_lrs

    adapted, ces, accs = [], [], []
    for t in range(batch.support_x.shape[0]):
        a, m = adapt_task(net, cfg, batch.support_x[t], batch.support_y[t], cfg.inner_steps, params=meta,
                          key=(cfg.seed, epoch), task_id=t, batch=cfg.inner_batch, drop_p=cfg.drop_path,
                          return_module=True)
        logits = query_logits(m, cfg, batch.support_x[t], batch.query_x[t], cfg.temp_end)
        ces.append(F.cross_entropy(logits, batch.query_y[t]).item())
        accs.append((logits.argmax(-1) == batch.query_y[t]).float().mean().item())
        adapted.append(a)
    lr_theta, lr_alpha = meta_lrs(cfg, epoch)
    new_meta = {}
    with torch.no_grad():
        for k, p in meta.items():
            lr = lr_alpha if is_arch(k) else lr_theta
            new_meta[k] = p + lr * (torch.stack([a[k] for a in adapted]).mean(0) - p)
    return new_meta, adapted, {"train_loss": sum(ces) / len(ces), "train_accuracy": sum(accs) / len(accs)}
