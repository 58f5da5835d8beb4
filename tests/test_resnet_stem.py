"""The ResNet-18 stem (model/resnet_stem.py): shapes, frozen layers out of θ, weights from a
local file, the random-init warning. 224-px inputs are expensive on a CPU: tiny tasks only."""
import json
import warnings

import pytest
import torch
from torchvision.models import resnet18

from model.config import ConfigError, build_config
from model.resnet_stem import RANDOM_INIT_WARNING, TRUNK_LAYERS, ResNetStem
from model.supernet import SuperNet
from model.task_learner import TaskLearner, expand

torch.set_num_threads(1)  # the test machine is shared


def resnet_cfg(**kw):
    base = dict(stem="resnet", n_way=3, channels=4, layers=2, reductions=[1], nodes=2, stem_multiplier=2,
                drop_path=0.0, inner_steps=1, task_optimizer="sgd", lr_theta_task=0.1, lr_alpha_task=0.1)
    base.update(kw)
    return build_config("smoke", base)


def quiet_net(cfg):
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return SuperNet(cfg, 3)


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
    """A random torchvision resnet18 state_dict saved to a local file (stands in for the
    ImageNet weights: same keys, shapes and running statistics)."""
    torch.manual_seed(123)
    path = tmp_path_factory.mktemp("weights") / "resnet18.pth"
    torch.save(resnet18(weights=None).state_dict(), path)
    return path


def test_stem_output_shape_and_support_statistics():
    torch.manual_seed(0)
    with pytest.warns(UserWarning):
        stem = ResNetStem(1, 8)
    x = torch.rand(4, 1, 28, 28)
    out = stem(x)
    assert out.shape == (4, 8, 28, 28)  # layer2 brings 224 px back to the cells' 28x28
    # bn_mode=support_stats: with the statistics of the first 2 (support) images, a query's
    # features do not depend on the other queries
    both = stem(x, stats_from=2)[2:]
    single = torch.cat([stem(torch.cat([x[:2], x[i:i + 1]]), stats_from=2)[2:] for i in (2, 3)])
    torch.testing.assert_close(both, single, rtol=1e-4, atol=1e-5)


def test_frozen_layers_stay_out_of_theta_and_receive_no_update():
    cfg = resnet_cfg()
    net = quiet_net(cfg)
    meta = {k: v.detach().clone() for k, v in net.named_parameters()}
    assert not any(".trunk." in k for k in meta)  # buffers: not adapted, not meta-learned
    assert {"stem_resnet.to_rgb.weight", "stem_resnet.to_stem.weight"} <= set(meta)
    frozen = {k: v.clone() for k, v in net.named_buffers() if ".trunk." in k}
    assert len(frozen) > 0
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(2, 3, 1, 28, 28, generator=g), torch.arange(3).expand(2, 3).contiguous()
    adapted, _ = TaskLearner(net, cfg).adapt(expand(meta, 2), expand({}, 2), x, y, key=(0, 1), task_ids=[0, 1],
                                             steps=1, batch=0, drop_p=0.0)
    assert set(adapted) == set(meta)
    for k, v in net.named_buffers():
        if k in frozen:
            assert torch.equal(v, frozen[k]), k
    assert not torch.equal(adapted["stem_resnet.to_rgb.weight"][0], meta["stem_resnet.to_rgb.weight"])


def test_trainable_layers_are_adapted_per_task():
    cfg = resnet_cfg(resnet_trainable=True)
    net = quiet_net(cfg)
    meta = {k: v.detach().clone() for k, v in net.named_parameters()}
    key = "stem_resnet.trunk.layer1.0.conv1.weight"
    assert key in meta and not any(".trunk." in k for k, _ in net.named_buffers())
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(1, 3, 1, 28, 28, generator=g), torch.arange(3).view(1, 3)
    adapted, _ = TaskLearner(net, cfg).adapt(expand(meta, 1), expand({}, 1), x, y, key=(0, 1), task_ids=[0],
                                             steps=1, batch=0, drop_p=0.0)
    assert not torch.equal(adapted[key][0], meta[key])


def test_weights_load_from_a_local_file(weights_file):
    cfg = resnet_cfg(resnet_weights=str(weights_file))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # pretrained weights: no random-init warning
        net = SuperNet(cfg, 3)
    assert net.warnings == []
    state = torch.load(weights_file, weights_only=True)
    trunk = net.stem_resnet.trunk.state_dict()
    assert len(trunk) > 0 and all(k.split(".")[0] in TRUNK_LAYERS for k in trunk)
    for k, v in trunk.items():
        assert torch.equal(v, state[k]), k
    # a wrong path is an error, never a silent random init or a download
    with pytest.raises(FileNotFoundError):
        SuperNet(resnet_cfg(resnet_weights=str(weights_file.parent / "missing.pth")), 3)


def test_config_refuses_resnet_options_without_the_resnet_stem():
    with pytest.raises(ConfigError) as err:
        build_config("smoke", {"resnet_trainable": True, "resnet_weights": "/x/r18.pth"})
    assert {"resnet_trainable", "resnet_weights"} <= set(err.value.errors)


def test_missing_weights_warn_and_are_recorded_in_run_json(tmp_path, data_root):
    with pytest.warns(UserWarning, match="randomly initialised"):
        net = SuperNet(resnet_cfg(), 3)
    assert net.warnings == [RANDOM_INIT_WARNING]

    from model.train import train

    cfg = resnet_cfg(meta_epochs=1, meta_batch=1, train_shots=1, test_tasks=1, test_steps=1, threads=1)
    with pytest.warns(UserWarning, match="randomly initialised"):
        train(cfg, tmp_path / "run", data_root=data_root)
    assert json.loads((tmp_path / "run" / "run.json").read_text())["warnings"] == [RANDOM_INIT_WARNING]
