"""The benchmark harness on real Omniglot: its JSON result, and that a trained run's config
(with meta-test overrides only) is what `meta_test --run` times."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.harness import main
from model.config import ConfigError, build_config
from model.train import train


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory, data_root):
    run = tmp_path_factory.mktemp("runs") / "smoke"
    train(build_config("smoke", {"meta_epochs": 2, "threads": 1}), run, data_root=data_root)
    return run


def _last_json(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_meta_epoch_prints_and_writes_its_result(tmp_path, capsys, data_root):
    out = tmp_path / "epoch.json"
    main(["meta_epoch", "--preset", "smoke", "--epochs", "2", "--warmup", "0", "--threads", "1", "--out", str(out)])
    res = _last_json(capsys)
    assert res == json.loads(out.read_text())
    assert res["n"] == 2 and res["min_s"] <= res["median_s"] <= res["max_s"]
    smoke = build_config("smoke")
    # 2 tasks x 2 inner steps x the whole 3-way 2-shot training set (inner_batch 0)
    assert res["images_per_epoch"] == smoke.meta_batch * smoke.inner_steps * smoke.n_way * smoke.train_shots == 24
    assert res["config"]["preset"] == "smoke" and res["config"]["threads"] == 1
    for key in ("n_way", "inner_batch", "meta_batch", "channels", "inner_steps", "engine", "dtype", "peak_rss_mb"):
        assert key in res


def test_meta_epoch_with_task_workers_reports_their_memory(tmp_path, capsys, data_root):
    """Worker processes hold a supernet and its activations too: their peak counts."""
    main(["meta_epoch", "--preset", "smoke", "--epochs", "1", "--warmup", "0", "--threads", "1",
          "--set", "task_workers=2", "--out", str(tmp_path / "epoch.json")])
    res = _last_json(capsys)
    assert res["peak_rss_worker_mb"] > 100          # a worker is a whole torch interpreter
    assert res["peak_rss_sum_mb"] == pytest.approx(res["peak_rss_mb"] + res["peak_rss_worker_mb"])


def test_meta_test_of_a_run_uses_the_runs_config_with_meta_test_overrides(smoke_run, tmp_path, capsys):
    main(["meta_test", "--run", str(smoke_run), "--tasks", "3", "--warmup", "0",
          "--set", "eval_chunk=1", "--set", "test_steps=1", "--out", str(tmp_path / "test.json")])
    res = _last_json(capsys)
    assert res["config"]["preset"] is None and res["run"] == str(smoke_run)
    assert res["config"]["eval_chunk"] == 1 and res["config"]["test_steps"] == 1
    assert res["n_way"] == 3 and res["channels"] == 4            # the run's, not the default preset's
    assert len(res["per_chunk_s"]) == 3 and res["tasks"] == 3


def test_meta_test_of_a_run_refuses_a_field_the_checkpoint_fixes(smoke_run, tmp_path):
    with pytest.raises(ConfigError) as err:
        main(["meta_test", "--run", str(smoke_run), "--tasks", "1", "--set", "channels=8",
              "--out", str(tmp_path / "never.json")])
    assert "channels" in err.value.errors and "cannot change at evaluation" in err.value.errors["channels"]
    assert not (tmp_path / "never.json").exists()


@pytest.mark.slow
def test_device_check_rehearses_every_gpu_step_on_the_cpu(tmp_path, data_root):
    """bench/device_check.sh runs on a lent GPU with no time to debug it there: its dry run
    must unpack the packed data, run every step and leave each step's JSON result in $OUT."""
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHON": sys.executable, "LAMANAS_DATA": str(data_root), "OUT": str(tmp_path)}
    subprocess.run(["bash", "bench/device_check.sh", "pack"], cwd=repo, env=env, check=True, capture_output=True)
    done = subprocess.run(["bash", "bench/device_check.sh", "run", "--dry"], cwd=repo, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:]
    steps = {"epoch-vmap", "epoch-loop", "test-600", "epoch-lstm-mse", "epoch-lstm-ip"}
    log = (tmp_path / "log.txt").read_text()
    for name in steps:
        assert f"== {name}: exit 0 " in log, log[-3000:]
        res = json.loads((tmp_path / f"{name}.json").read_text())
        assert res["config"]["device"] == "cpu" and res["config"]["task_workers"] == 1
    assert json.loads((tmp_path / "test-600.json").read_text())["tasks"] == 4
    assert json.loads((tmp_path / "epoch-lstm-ip.json").read_text())["config"]["phi_update"] == "inner_product"
