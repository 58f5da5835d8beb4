"""The ResNet-18 stem (paper §5): the supernet's cells on top of the first ResNet-18 layers.

    x (N, 1, 28, 28) -> 1x1 conv to 3 channels -> bilinear upsampling to 224 px
      -> ImageNet normalisation -> conv1, bn1, relu, maxpool, layer1, layer2 (torchvision
      resnet18 names) -> 1x1 conv to the stem's channels (SuperNet's stem BN follows)

- Layers: up to layer2. At 224 px layer1 leaves 56x56 maps and layer2 28x28: with layer2
  the cells run at the conv stem's 28x28, so the supernet (its reductions and its cost,
  which dominates on a CPU) is the one the search space was designed for; stopping at
  layer1 would make every cell 4x as expensive for less ResNet depth.
- The 1x1 conv to RGB runs before upsampling: both maps are affine and the bilinear weights
  of every output pixel sum to 1, so the order does not change the result, and the conv
  costs 64x less at 28 px.
- BatchNorm inside the ResNet layers normalises with batch statistics (model.ops.batch_norm,
  honouring `stats_from` for bn_mode=support_stats) and keeps the pretrained affine weight
  and bias; the file's running statistics are not used. Like every BN of the supernet it
  keeps no running statistics (they would not survive per-task functional parameters), and
  Omniglot strokes are far from ImageNet's statistics, so the per-batch ones are the
  better fit for the pretrained filters anyway (as AdaBN); it also works for random init.
- Frozen (default): the ResNet tensors are buffers, so they are not in the parameter dict
  that the task learner, Reptile and MAML adapt and update (they are rebuilt from the
  weights file, or from the seed, when a run is resumed or evaluated). `trainable=True`
  registers them as parameters: adapted per task and meta-learned like the rest of θ.
  The two 1x1 convs are always trainable.
- Weights: a local state_dict file (`torch.load(weights_only=True)`, torchvision's
  resnet18 key names, e.g. resnet18-f37072fd.pth); no download at run time. Without one
  the layers keep torchvision's random init: a warning is issued and kept in `warnings`
  (train() records it in run.json).
"""
from __future__ import annotations

import warnings as _warnings
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .ops import BN

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INPUT_SIZE = 224
TRUNK_LAYERS = ("conv1", "bn1", "layer1", "layer2")  # relu and maxpool have no weights
TRUNK_CHANNELS = 128  # layer2's output
RANDOM_INIT_WARNING = "stem=resnet without resnet_weights: the ResNet-18 layers are randomly initialised, not pretrained"


class ResNetTrunk(nn.Module):
    """conv1 .. layer2 of torchvision's resnet18, with batch-statistics BN; its state_dict
    keys are torchvision's, so a resnet18 weights file loads by name."""

    def __init__(self):
        super().__init__()
        from torchvision.models import resnet18  # heavy import, only for this stem

        full = resnet18(weights=None, norm_layer=partial(BN, affine=True))
        for name in TRUNK_LAYERS:
            setattr(self, name, getattr(full, name))

    def forward(self, x, stats_from=None):
        x = F.relu(self.bn1(self.conv1(x), stats_from))
        x = F.max_pool2d(x, 3, 2, 1)
        for block in (*self.layer1, *self.layer2):
            x = _basic_block(block, x, stats_from)
        return x


def _basic_block(b, x, stats_from):
    """torchvision's BasicBlock.forward, with `stats_from` passed to its BNs."""
    out = F.relu(b.bn1(b.conv1(x), stats_from))
    out = b.bn2(b.conv2(out), stats_from)
    identity = x if b.downsample is None else b.downsample[1](b.downsample[0](x), stats_from)
    return F.relu(out + identity)


class ResNetStem(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, weights_path: str = "", trainable: bool = False):
        super().__init__()
        self.to_rgb = nn.Conv2d(in_channels, 3, 1)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
        self.trunk = ResNetTrunk()
        self.warnings: list[str] = []
        if weights_path:
            load_trunk_weights(self.trunk, weights_path)
        else:
            self.warnings.append(RANDOM_INIT_WARNING)
            _warnings.warn(RANDOM_INIT_WARNING, stacklevel=2)
        if not trainable:
            freeze(self.trunk)
        self.to_stem = nn.Conv2d(TRUNK_CHANNELS, out_channels, 1, bias=False)

    def forward(self, x, stats_from=None):
        x = self.to_rgb(x)  # before upsampling: same result, 64x cheaper (see module doc)
        x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)
        x = (x - self.mean) / self.std
        return self.to_stem(self.trunk(x, stats_from))


def load_trunk_weights(trunk: ResNetTrunk, path: str) -> None:
    """Copy conv1..layer2 from a local resnet18 state_dict file (running statistics and
    the later layers in it are ignored)."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"resnet_weights: {path} is not a file (weights are never downloaded at run time)")
    state = torch.load(path, map_location="cpu", weights_only=True)
    wanted = trunk.state_dict()
    missing = [k for k in wanted if k not in state]
    if missing:
        raise ValueError(f"resnet_weights: {path} is not a torchvision resnet18 state_dict (missing {missing[:3]}...)")
    bad = [k for k in wanted if state[k].shape != wanted[k].shape]
    if bad:
        raise ValueError(f"resnet_weights: {path}: shape mismatch for {bad[:3]}")
    trunk.load_state_dict({k: state[k] for k in wanted})


def freeze(module: nn.Module) -> None:
    """Turn every parameter of `module` into a buffer of the same name: out of
    named_parameters() (so out of θ), still moved by .to()/.double() and used by forward."""
    for m in module.modules():
        for name, p in list(m.named_parameters(recurse=False)):
            del m._parameters[name]
            m.register_buffer(name, p.detach())
