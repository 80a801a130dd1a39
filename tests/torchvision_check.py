#!/usr/bin/python3
"""Loads runaway's exported weights into torchvision's resnet18.

usage: torchvision_check.py WEIGHTS.safetensors X.safetensors

The encoder tensors must load with load_state_dict(strict=False) leaving only
fc.* missing, and torchvision's forward in eval mode (fc replaced by
Identity) must reproduce runaway's features of X's images. Exits 1 otherwise.
"""
import sys

import torch
import torchvision

from torch_ref import read_st


def main():
    weights, _ = read_st(sys.argv[1])
    data, _ = read_st(sys.argv[2])
    enc = {k: v for k, v in weights.items()
           if not k.startswith(("teacher.", "projector.", "predictor."))}
    net = torchvision.models.resnet18()
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
    print("torchvision resnet18 features vs runaway: relative difference %.2e" % rel)
    if rel > 1e-4:
        sys.exit(1)


if __name__ == "__main__":
    main()
