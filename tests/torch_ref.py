#!/usr/bin/python3
"""Reference check of runaway's training step against PyTorch (float64).

usage: torch_ref.py WEIGHTS.safetensors STEP.safetensors

WEIGHTS is what `runaway-worker export` writes (online + teacher, with the
model configuration in its metadata); STEP holds the two input views
(x1, x2), runaway's loss and the gradient of every online parameter
("grad.<name>"). The same network is built in PyTorch (ResNet-18 in
torchvision's layout with runaway's width/stem options, projector,
predictor), the same step is computed in float64, and every gradient is
compared. Exits 1 with the worst tensor named when any disagrees.
"""
import json
import os
import struct
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

DT = {"F32": torch.float32, "I64": torch.int64, "I32": torch.int32, "U8": torch.uint8}
SIZE = {"F32": 4, "I64": 8, "I32": 4, "U8": 1}


def read_st(path):
    with open(path, "rb") as f:
        blob = bytearray(os.fstat(f.fileno()).st_size)
        f.readinto(blob)
    (n,) = struct.unpack("<Q", blob[:8])
    head = json.loads(bytes(blob[8:8 + n]))
    meta = head.pop("__metadata__", {})
    out = {}
    # Tensors are views of the one buffer (they keep it alive): a weights
    # file at torchvision's width is ~90 MB, read once and not copied.
    for name, e in head.items():
        b, end = e["data_offsets"]
        dt = DT[e["dtype"]]
        t = torch.frombuffer(blob, dtype=dt, count=(end - b) // SIZE[e["dtype"]],
                             offset=8 + n + b) if end > b else torch.zeros(0, dtype=dt)
        out[name] = t.reshape(e["shape"])
    return out, meta


class Block(nn.Module):
    def __init__(self, c, k, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(c, k, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(k)
        self.conv2 = nn.Conv2d(k, k, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(k)
        self.downsample = None
        if stride != 1 or c != k:
            self.downsample = nn.Sequential(nn.Conv2d(c, k, 1, stride, bias=False), nn.BatchNorm2d(k))

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + (self.downsample(x) if self.downsample is not None else x))


class Net(nn.Module):
    def __init__(self, stem, width, ph, pout, pred, qh):
        super().__init__()
        w = width
        if stem == 0:  # imagenet
            self.conv1 = nn.Conv2d(3, w, 7, 2, 3, bias=False)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
        else:
            self.conv1 = nn.Conv2d(3, w, 3, 1, 1, bias=False)
            self.maxpool = nn.Identity()
        self.bn1 = nn.BatchNorm2d(w)
        c = w
        for L in range(4):
            k = w << L
            blocks = []
            for b in range(2):
                blocks.append(Block(c, k, 2 if (L > 0 and b == 0) else 1))
                c = k
            setattr(self, "layer%d" % (L + 1), nn.Sequential(*blocks))
        self.projector = nn.Sequential(nn.Linear(c, ph), nn.BatchNorm1d(ph), nn.ReLU(), nn.Linear(ph, pout))
        if pred == 0:    # mlp
            self.predictor = nn.Sequential(nn.Linear(pout, qh), nn.ReLU(), nn.Linear(qh, pout))
        elif pred == 1:  # mlp_bn
            self.predictor = nn.Sequential(nn.Linear(pout, qh), nn.BatchNorm1d(qh), nn.ReLU(),
                                           nn.Linear(qh, pout))
        elif pred in (2, 3):  # linear, linear_identity
            self.predictor = nn.Linear(pout, pout, bias=False)
        else:
            self.predictor = nn.Identity()

    def encode(self, x):
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        for L in range(4):
            x = getattr(self, "layer%d" % (L + 1))(x)
        return x.mean(dim=(2, 3))

    def project(self, x):
        return self.projector(self.encode(x))


def main():
    weights, meta = read_st(sys.argv[1])
    step, _ = read_st(sys.argv[2])
    stem, width, ph, pout, pred, qh = map(int, meta["runaway.model"].split())
    kind, alpha, beta, tan = meta["runaway.loss"].split()
    kind, alpha, beta, tan = int(kind), float(alpha), float(beta), int(tan)

    classes = int(meta.get("runaway.classes", "0"))
    online = Net(stem, width, ph, pout, pred, qh).double()
    if classes:  # the supervised baseline's classifier on the projections
        online.classifier = nn.Linear(pout, classes).double()
    teacher = Net(stem, width, ph, pout, pred, qh).double()
    on_sd = {k: v for k, v in weights.items() if not k.startswith("teacher.")}
    te_sd = {k[8:]: v for k, v in weights.items() if k.startswith("teacher.")}
    online.load_state_dict({k: v.double() if v.is_floating_point() else v for k, v in on_sd.items()})
    missing = teacher.load_state_dict({k: v.double() if v.is_floating_point() else v
                                       for k, v in te_sd.items()}, strict=False)
    assert all(k.startswith("predictor") for k in missing.missing_keys), missing
    online.train()
    teacher.train()

    x1, x2 = step["x1"].double(), step["x2"].double()
    p, z = [], []
    for x in (x1, x2):
        p.append(F.normalize(online.predictor(online.project(x)), dim=1))
        with torch.no_grad():
            z.append(F.normalize(teacher.project(x), dim=1))

    def sq(a, b):
        return ((a - b) ** 2).sum(dim=1)

    cond = []

    def cross(a, b):
        if not tan:
            return sq(a, b)
        lam = (a * b).sum(dim=1).detach()
        # For unit vectors the Tan value is 1/lam - lam: its sensitivity to
        # lam is 1/lam^2 + 1. runaway's float32 p (after ~20 layers) agrees
        # with the float64 one to ~1e-6, so lam does too, and the value (not
        # the gradient) is ill-conditioned where lam -> 0.
        cond.append((1.0 / lam ** 2 + 1.0).mean().item())
        return sq(b, lam[:, None] * a) / lam

    if classes:  # the mean of the two views' cross-entropy
        labels = step["labels"].reshape(-1).long()
        loss = 0.5 * sum(F.cross_entropy(online.classifier(online.project(x)), labels)
                         for x in (x1, x2))
    elif kind == 0:  # byol
        loss = (cross(p[0], z[1]) + cross(p[1], z[0])).mean()
    else:
        align = sq(p[0], p[1]).mean()
        lc = 0.5 * (cross(p[0], z[0]) + cross(p[1], z[1])).mean()
        loss = alpha * align + beta * lc
    loss.backward()

    ours = float(step["loss"].reshape(-1)[0])
    worst, worst_name, n = 0.0, "", 0
    tol = 1e-5 * max(1.0, abs(loss.item())) + 2e-6 * sum(cond) * max(1.0, abs(beta))
    ok = abs(ours - loss.item()) <= tol
    print("loss: runaway %.7f  torch %.7f  (tolerance %.1e)" % (ours, loss.item(), tol))
    # Tolerance: float32 against float64 through ~20 layers with batch
    # statistics; agreement is ~1e-5 relative per tensor when correct, while
    # a wrong gradient is off by O(1). Biases whose exact gradient is zero
    # (a shift a following BatchNorm removes) hold only rounding noise in
    # both, so they are compared in absolute terms.
    for name, prm in online.named_parameters():
        g_ref = prm.grad if prm.grad is not None else torch.zeros_like(prm)
        g = step["grad." + name].double()
        scale = g_ref.norm().item()
        err = (g - g_ref).norm().item()
        rel = err / scale if scale > 1e-6 else err
        n += 1
        if rel > worst:
            worst, worst_name = rel, name
    print("gradients: %d tensors, worst relative error %.3e (%s)" % (n, worst, worst_name))
    if worst > 1e-3 or not ok:
        print("MISMATCH")
        sys.exit(1)


if __name__ == "__main__":
    main()
