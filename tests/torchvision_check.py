#!/usr/bin/python3
"""Loads runaway's exported weights into torchvision's ResNet.

usage: torchvision_check.py WEIGHTS.safetensors X.safetensors [--encoder-only]

The model is torchvision's resnet18, resnet34 or resnet50, changed as
docs/results.md shows for the stem and width that the file's "runaway"
metadata (JSON) names. The encoder
tensors must load with load_state_dict(strict=False) leaving only fc.*
missing and nothing unexpected, and torchvision's forward in eval mode (fc
replaced by Identity) must reproduce runaway's features of X's images.
With --encoder-only the file is loaded whole, unfiltered, and must hold
exactly torchvision's keys but fc.* (same shapes and dtypes, the
num_batches_tracked counters int64 scalars). Exits 1 otherwise.
"""
import json
import sys

import torch
import torchvision
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from torch_ref import read_st


ARCHS = {  # torchvision's constructor, block and blocks per stage
    "resnet18": (torchvision.models.resnet18, BasicBlock, [2, 2, 2, 2]),
    "resnet34": (torchvision.models.resnet34, BasicBlock, [3, 4, 6, 3]),
    "resnet50": (torchvision.models.resnet50, Bottleneck, [3, 4, 6, 3]),
}


def runaway_resnet(arch, stem, width):
    """torchvision's ResNet with runaway's stem and width (docs/results.md)."""
    make, block, depth = ARCHS[arch]
    m = make()
    if width != 64:  # no width knob (width_per_group is the inner one): the layers made again
        w = width
        m.inplanes = w
        m.conv1 = nn.Conv2d(3, w, 7, 2, 3, bias=False)
        m.bn1 = nn.BatchNorm2d(w)
        m.layer1 = m._make_layer(block, w, depth[0])
        m.layer2 = m._make_layer(block, 2 * w, depth[1], stride=2)
        m.layer3 = m._make_layer(block, 4 * w, depth[2], stride=2)
        m.layer4 = m._make_layer(block, 8 * w, depth[3], stride=2)
        m.fc = nn.Linear(8 * w * block.expansion, 1000)
    if stem == "cifar":
        m.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        m.maxpool = nn.Identity()
    return m


def main():
    weights, meta = read_st(sys.argv[1])
    data, _ = read_st(sys.argv[2])
    encoder_only = "--encoder-only" in sys.argv[3:]
    info = json.loads(meta["runaway"])
    enc_info = info["encoder"]
    if info["contents"] != ("encoder" if encoder_only else "full"):
        print("runaway metadata: contents %r" % info["contents"])
        sys.exit(1)
    arch = enc_info.get("arch", "resnet18")
    net = runaway_resnet(arch, enc_info["stem"], enc_info["width"])
    if encoder_only:
        enc = weights
        want = {k: v for k, v in net.state_dict().items() if not k.startswith("fc.")}
        if sorted(enc) != sorted(want):
            print("keys: extra %s, lacking %s" % (sorted(set(enc) - set(want)),
                                                  sorted(set(want) - set(enc))))
            sys.exit(1)
        for k, v in want.items():
            if enc[k].dtype != v.dtype or enc[k].shape != v.shape:
                print("%s: %s %s, torchvision %s %s" % (k, enc[k].dtype, tuple(enc[k].shape),
                                                        v.dtype, tuple(v.shape)))
                sys.exit(1)
    else:
        enc = {k: v for k, v in weights.items()
               if not k.startswith(("teacher.", "projector.", "predictor.", "classifier."))}
    res = net.load_state_dict(enc, strict=False)
    missing = sorted(res.missing_keys)
    if missing != ["fc.bias", "fc.weight"] or res.unexpected_keys:
        print("load_state_dict: missing %s, unexpected %s" % (missing, res.unexpected_keys))
        sys.exit(1)
    net.fc = torch.nn.Identity()
    net.eval()
    with torch.no_grad():
        ref = net(data["x"])
    ours = data["features"]
    # float32 on both sides, different convolution algorithms: ~1e-6 relative.
    rel = ((ours - ref).norm() / ref.norm()).item()
    print("torchvision %s (%s stem, width %d) features vs runaway: relative difference "
          "%.2e" % (arch, enc_info["stem"], enc_info["width"], rel))
    if rel > 1e-4:
        sys.exit(1)


if __name__ == "__main__":
    main()
