"""Task worker processes (`task_workers` > 1): shards of a meta-batch adapted in other
processes must give what one process gives, on real Omniglot tasks."""
import pytest
import torch

from model.config import build_config
from model.task_pool import shard_bounds


@pytest.mark.parametrize("tasks, shards, expected", [
    (5, 2, [(0, 2), (2, 5)]),
    (6, 2, [(0, 3), (3, 6)]),
    (7, 3, [(0, 2), (2, 5), (5, 7)]),
    (1, 4, [(0, 1)]),            # never an empty shard
    (3, 3, [(0, 1), (1, 2), (2, 3)]),
])
def test_shards_are_contiguous_balanced_and_never_empty(tasks, shards, expected):
    assert shard_bounds(tasks, shards) == expected


def _adapt_both_ways(omniglot, over):
    """(pooled, in-process) adapt results for 3 real tasks, in float64 so that only the
    algorithm, not summation order, is compared (Adam with beta1=0 magnifies fp32 noise)."""
    from model.data import TaskSampler
    from model.supernet import SuperNet
    from model.task_learner import TaskLearner, expand
    from model.train import make_loss

    cfg = build_config("smoke", dict(meta_batch=3, task_workers=2, drop_path=0.2, inner_batch=4, inner_steps=3,
                                     prune_threshold=0.0, **over))
    torch.manual_seed(0)
    net = SuperNet(cfg, cfg.n_way).double()
    meta = {k: v.detach().clone() for k, v in net.named_parameters()}
    loss = make_loss(cfg)
    phi = {k: v.double() for k, v in loss.init_phi(torch.Generator().manual_seed(1)).items()}
    b = TaskSampler(omniglot, cfg.split, "train", cfg.n_way, cfg.train_shots, cfg.q_query, cfg.rotations,
                    cfg.seed).tasks(4, range(3))
    kw = dict(key=(cfg.seed, 4), task_ids=[0, 1, 2], steps=cfg.inner_steps, batch=cfg.inner_batch,
              drop_p=cfg.drop_path, learn_phi=True, query_x=b.query_x.double(), query_y=b.query_y,
              predict_temp=cfg.temp_end)
    learner = TaskLearner(net, cfg, loss)
    args = lambda: (expand(meta, 3), expand(phi, 3), b.support_x.double(), b.support_y)  # noqa: E731
    try:
        pooled = learner.adapt(*args(), **kw)
        assert learner._pool is not None and learner._pool.size == 2
        here = learner.adapt_here(*args(), **kw)
        # the query logits each shard returns are those of predicting after adaptation
        torch.testing.assert_close(here[1]["query_logits"],
                                   learner.predict(here[0], b.support_x.double(), b.query_x.double(), cfg.temp_end))
    finally:
        learner.close()
    return meta, pooled, here


@pytest.mark.parametrize("over", [pytest.param({}, id="ce"),
                                  pytest.param(dict(loss="fnn", phi_update="mse", loss_hidden=8), id="fnn-mse"),
                                  # frozen ResNet layers are buffers, not θ: the workers need the parent's
                                  pytest.param(dict(stem="resnet"), id="resnet-stem")])
def test_pooled_adaptation_equals_one_process(omniglot, over):
    meta, (p_pool, s_pool), (p_here, s_here) = _adapt_both_ways(omniglot, over)
    for k in meta:
        assert p_pool[k].shape == p_here[k].shape == (3, *meta[k].shape)
        torch.testing.assert_close(p_pool[k], p_here[k], rtol=1e-9, atol=1e-12)
    # the worker's shard (tasks 1, 2) really moved, and differently per task
    assert not torch.allclose(p_pool["classifier.weight"][2], meta["classifier.weight"])
    assert not torch.allclose(p_pool["classifier.weight"][1], p_pool["classifier.weight"][2])
    assert s_pool["query_logits"].shape == (3, 3, 3)   # tasks, 3-way × 1 query, 3 classes
    torch.testing.assert_close(s_pool["query_logits"], s_here["query_logits"], rtol=1e-9, atol=1e-12)
    # scalars are task-weighted means over shards (2 workers: shards of 1 and 2 tasks)
    for k in ("inner_ce_first", "inner_ce_last"):
        assert s_pool[k] == pytest.approx(s_here[k], rel=1e-9)
    if "phi" in s_here:
        for k in s_here["phi"]:
            torch.testing.assert_close(s_pool["phi"][k], s_here["phi"][k], rtol=1e-9, atol=1e-12)
        assert s_pool["phi_objective_last"] == pytest.approx(s_here["phi_objective_last"], rel=1e-9)


def test_worker_errors_reach_the_caller_and_close_stops_workers():
    from model.task_learner import expand
    from model.task_pool import TaskPool

    cfg = build_config("smoke", {"task_workers": 2})
    pool = TaskPool(cfg, 2, {})
    try:
        meta = {"not_a_parameter": torch.zeros(3)}
        x, y = torch.rand(2, 3, 1, 28, 28), torch.arange(3).expand(2, 3).contiguous()
        with pytest.raises(RuntimeError, match="a task worker failed"):
            pool.adapt(lambda *a, **k: ({}, {}), expand(meta, 2), {}, x, y, key=(0, 0), task_ids=[0, 1], steps=1,
                       batch=0, drop_p=0.0)
    finally:
        pool.close()
    assert all(proc.poll() == 0 for proc in pool._procs)   # exited cleanly on the close message
