#!/usr/bin/python3
"""runaway's training step written in PyTorch: the yardstick of the GPU
benchmark, and a check that it computes the same step as runaway.

usage:
  torch_twin.py --bench [--device cuda|cpu] [--modes fp32,tf32,bf16,compile]
                [--batch 128] [--size 96] [--stem imagenet|cifar]
                [--predictor mlp|mlp_bn|linear|none] [--loss raft|byol|byol']
                [--steps 20] [--warmup 5] [--mode-seconds 150]
  torch_twin.py --check WEIGHTS STEP AFTER

The step (DESIGN.md): torchvision's resnet18 (fc removed; the `cifar` stem is
a 3x3/1 conv without max-pool) -> projector Linear(512,512)-BN-ReLU-
Linear(512,128) -> predictor; each view its own forward pass (per-view
BatchNorm statistics) through the online network and through the teacher
(training-mode BN, no_grad); loss; backward; Adam (lr 3e-4, betas
(0.9, 0.999), eps 1e-8; fused on CUDA); then the EMA
xi <- tau xi + (1 - tau) theta with _foreach ops (tau 0.996).

--bench times that step in each mode, each in its own process under its own
time limit (--mode-seconds, or RW_TWIN_MODE_S), and prints per mode one line
    twin MODE pairs/s X ms/step Y peak_mib Z steps N ...
or  twin MODE failed: REASON
Modes: fp32 (TF32 off), tf32 (TF32 on), bf16 (autocast bf16, model and inputs
channels_last, eager), compile (bf16 + channels_last, forward and backward
under torch.compile mode reduce-overhead), compile-max (max-autotune; only
when asked). The views are random tensors already on the device: the timed
step has no augmentation, while runaway's figure includes its GPU-rendered
views.

--check runs ONE step on the CPU in float32 from runaway's exported weights
(WEIGHTS, as `runaway-worker export` writes them) on the inputs and Adam
state in STEP (written by tests/test_model.c) and compares the loss, every
gradient, and the parameters, teacher and BatchNorm statistics after the
step with runaway's (AFTER, exported after its step). Exit 1 names the
worst tensor when any disagrees.
"""
import argparse
import contextlib
import copy
import os
import resource
import signal
import subprocess
import sys
import time

T0 = time.monotonic()  # a mode's budget counts from here: importing torch takes seconds

try:
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
except ImportError as _e:
    # 77: "skipped" to meson and to the C test that runs --check
    print("torch_twin: PyTorch is not installed (%s)" % _e, file=sys.stderr)
    sys.exit(77)

# The step's hyperparameters: runaway's defaults (DESIGN.md; worker/bench.c
# and the C check use the same numbers).
LR = 3e-4
BETAS = (0.9, 0.999)
EPS = 1e-8
TAU = 0.996

MODES = ("fp32", "tf32", "bf16", "compile", "compile-max")
# runaway's enums as rw_weights_export writes them (proto/spec.h)
STEMS = {0: "imagenet", 1: "cifar"}
PREDICTORS = {0: "mlp", 1: "mlp_bn", 2: "linear", 3: "linear_identity", 4: "none"}
LOSSES = {"raft": ("unified", 1.0, -1.0), "byol'": ("unified", 1.0, 1.0),
          "byol": ("byol", 0.0, 0.0)}


class Unavailable(Exception):
    """A mode this machine cannot run (said in its line; the others go on)."""


def _resnet18():
    try:
        import torchvision
    except ImportError:
        return None
    return torchvision.models.resnet18(weights=None)


def build_online(stem, proj_hidden=512, proj_out=128, pred="mlp", pred_hidden=512):
    """resnet18 with runaway's names: conv1 ... layer4 at the top (as
    torchvision's state_dict), then projector.* and predictor.*."""
    net = _resnet18()
    if net is None:
        # No torchvision: tests/torch_ref.py's ResNet-18, the same layers,
        # names and math (runaway's export loads into either).
        sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
        from torch_ref import Net
        net = Net(0 if stem == "imagenet" else 1, 64, proj_hidden, proj_out, 0, pred_hidden)
        net.twin_note = "torchvision missing: tests/torch_ref.py's ResNet-18"
    else:
        if stem == "cifar":
            net.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
            # torchvision's own init of its convolutions, kept for the new one
            nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
            net.maxpool = nn.Identity()
        net.fc = nn.Identity()
        net.twin_note = "torchvision resnet18"
    feat = 512
    net.projector = nn.Sequential(nn.Linear(feat, proj_hidden), nn.BatchNorm1d(proj_hidden),
                                  nn.ReLU(inplace=True), nn.Linear(proj_hidden, proj_out))
    if pred == "mlp":  # no BN: the paper's appendix C
        net.predictor = nn.Sequential(nn.Linear(proj_out, pred_hidden), nn.ReLU(inplace=True),
                                      nn.Linear(pred_hidden, proj_out))
    elif pred == "mlp_bn":
        net.predictor = nn.Sequential(nn.Linear(proj_out, pred_hidden), nn.BatchNorm1d(pred_hidden),
                                      nn.ReLU(inplace=True), nn.Linear(pred_hidden, proj_out))
    elif pred in ("linear", "linear_identity"):
        net.predictor = nn.Linear(proj_out, proj_out, bias=False)
        if pred == "linear_identity":
            with torch.no_grad():
                net.predictor.weight.copy_(torch.eye(proj_out))
    elif pred == "none":
        net.predictor = nn.Identity()
    else:
        raise ValueError("unknown predictor %r" % pred)
    return net


def make_teacher(online):
    """The mean teacher: encoder + projector of the online network, no
    gradient, training-mode BN with its own running statistics."""
    t = copy.deepcopy(online)
    del t.predictor
    t.requires_grad_(False)
    return t


def encode(net, x):
    # torchvision's forward ends at fc (Identity): the pooled 512 features
    return net.encode(x) if hasattr(net, "encode") else net(x)


def loss_fn(p1, p2, z1, z2, kind, alpha, beta, tan):
    """kernels/cpu/loss.c's objective on normalized p (online) and z (teacher)."""
    def sq(a, b):
        return ((a - b) ** 2).sum(dim=1)

    def cross(p, z):
        if not tan:
            return sq(p, z)
        lam = (p * z).sum(dim=1).detach()  # Tan: |z - lam p|^2 / lam, lam = sg(<p, z>)
        return sq(z, lam[:, None] * p) / lam

    if kind == "byol":  # symmetrized
        return (cross(p1, z2) + cross(p2, z1)).mean()
    return alpha * sq(p1, p2).mean() + beta * 0.5 * (cross(p1, z1) + cross(p2, z2)).mean()


class TwinStep:
    """One training step; forward_backward() then update(), as runaway's
    rw_model_forward_backward and rw_model_update."""

    def __init__(self, online, teacher, loss, autocast=None, compile_mode=None, fused=False):
        self.online, self.teacher = online, teacher
        self.loss = loss  # (kind, alpha, beta, tan)
        self.device_type = next(online.parameters()).device.type
        self.autocast = autocast
        params = list(online.parameters())
        self.adam_note = "adam default"
        self.opt = None
        if fused:
            try:
                self.opt = torch.optim.Adam(params, lr=LR, betas=BETAS, eps=EPS, fused=True)
                self.adam_note = "adam fused"
            except (TypeError, RuntimeError) as e:
                self.adam_note = "adam foreach (fused: %s)" % str(e).splitlines()[0][:60]
                self.opt = torch.optim.Adam(params, lr=LR, betas=BETAS, eps=EPS, foreach=True)
        if self.opt is None:
            self.opt = torch.optim.Adam(params, lr=LR, betas=BETAS, eps=EPS)
        # the EMA pairs: every teacher tensor with the online one of its name
        on = dict(online.named_parameters())
        self.t_params = [p for _, p in teacher.named_parameters()]
        self.o_params = [on[n] for n, _ in teacher.named_parameters()]
        self.fwd = self._forward
        if compile_mode:
            if not hasattr(torch, "compile"):
                raise Unavailable("torch.compile needs PyTorch 2 (this is %s)" % torch.__version__)
            # Forward and loss compiled; AOTAutograd compiles the backward
            # with them (both cudagraphed in reduce-overhead). Adam (fused)
            # and the EMA (_foreach) are already a few multi-tensor kernels.
            self.fwd = torch.compile(self._forward, mode=compile_mode)

    def _forward(self, x1, x2):
        ctx = (torch.autocast(device_type=self.device_type, dtype=self.autocast)
               if self.autocast else contextlib.nullcontext())
        with ctx:
            # per-view passes: each view its own BatchNorm statistics
            p = [F.normalize(self.online.predictor(self.online.projector(encode(self.online, x)))
                             .float(), dim=1) for x in (x1, x2)]
            with torch.no_grad():
                z = [F.normalize(self.teacher.projector(encode(self.teacher, x)).float(), dim=1)
                     for x in (x1, x2)]
            return loss_fn(p[0], p[1], z[0], z[1], *self.loss)

    def forward_backward(self, x1, x2):
        mark = getattr(getattr(torch, "compiler", None), "cudagraph_mark_step_begin", None)
        if mark and self.fwd is not self._forward:
            mark()  # a new step: cudagraph outputs of the last one may be reused
        self.opt.zero_grad(set_to_none=True)
        loss = self.fwd(x1, x2)
        loss.backward()
        return loss

    @torch.no_grad()
    def update(self):
        self.opt.step()
        # after Adam, with the updated theta (DESIGN.md's order)
        torch._foreach_mul_(self.t_params, TAU)
        torch._foreach_add_(self.t_params, self.o_params, alpha=1.0 - TAU)


# ------------------------------------------------------------------ bench

def set_math(mode, cuda):
    """TF32 off for fp32, on for the others (what PyTorch users run).
    PyTorch >= 2.9 has fp32_precision and warns on the old flags."""
    if not cuda:
        return "cpu"
    tf32 = mode != "fp32"
    torch.backends.cudnn.benchmark = True
    try:
        torch.backends.cuda.matmul.fp32_precision = "tf32" if tf32 else "ieee"
        torch.backends.cudnn.conv.fp32_precision = "tf32" if tf32 else "ieee"
        return "fp32_precision %s" % ("tf32" if tf32 else "ieee")
    except (AttributeError, RuntimeError, ValueError):
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
        return "allow_tf32 %s" % tf32


def bench_one(a, mode):
    """One mode in this process: prints its `twin` line."""
    budget = a.mode_seconds
    dev = torch.device(a.device)
    cuda = dev.type == "cuda"
    if cuda and not torch.cuda.is_available():
        raise Unavailable("no CUDA device visible to PyTorch %s" % torch.__version__)
    if mode == "tf32" and not cuda:
        raise Unavailable("TF32 is a CUDA math mode (device %s)" % a.device)
    math = set_math(mode, cuda)
    if cuda:
        print("twin: %s, cuDNN %s" % (torch.cuda.get_device_name(), torch.backends.cudnn.version()),
              flush=True)
    bf16 = mode in ("bf16", "compile", "compile-max")
    compile_mode = {"compile": "reduce-overhead", "compile-max": "max-autotune"}.get(mode)
    torch.manual_seed(0)
    online = build_online(a.stem, pred=a.predictor).to(dev)
    teacher = make_teacher(online)
    online.train()
    teacher.train()
    fmt = torch.channels_last if bf16 else torch.contiguous_format
    online.to(memory_format=fmt)
    teacher.to(memory_format=fmt)
    x1 = torch.randn(a.batch, 3, a.size, a.size, device=dev).contiguous(memory_format=fmt)
    x2 = torch.randn(a.batch, 3, a.size, a.size, device=dev).contiguous(memory_format=fmt)
    kind, alpha, beta = LOSSES[a.loss]
    step = TwinStep(online, teacher, (kind, alpha, beta, 0), torch.bfloat16 if bf16 else None,
                    compile_mode, fused=cuda)
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    if cuda:
        torch.cuda.reset_peak_memory_stats()

    def one():
        step.forward_backward(x1, x2)
        step.update()

    last = 0.0
    for _ in range(max(1, a.warmup)):  # compiles, plans, cudagraph records
        t0 = time.monotonic()
        one()
        sync()
        last = time.monotonic() - t0
    # Fit the timed steps in what is left of the mode's budget (a slow
    # compile leaves fewer steps, not a killed mode).
    left = budget - (time.monotonic() - T0) - 10
    steps = a.steps
    if last > 0 and steps * last > left:
        steps = max(2, int(left / last))
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        one()
    sync()
    dt = (time.perf_counter() - t0) / steps
    loss = float(step.forward_backward(x1, x2).detach())
    if cuda:
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:  # the process's peak resident memory: the closest thing on a CPU
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    extra = ""
    if compile_mode:
        try:
            from torch._dynamo.utils import counters
            # >0: inductor ran (part of) the step without CUDA graphs
            extra = " cudagraph_skips %d" % counters["inductor"]["cudagraph_skips"]
        except Exception:  # noqa: BLE001 -- a private API; only a hint
            pass
    print("twin %s pairs/s %.1f ms/step %.2f peak_mib %.0f steps %d loss %.4f%s (%s; %s; %s)"
          % (mode, a.batch / dt, dt * 1e3, peak, steps, loss, extra, step.adam_note, math,
             online.twin_note), flush=True)
    if not (loss == loss) or abs(loss) == float("inf"):
        print("twin %s: warning: the loss is not finite" % mode, flush=True)


def bench(a):
    dev = a.device
    # (CUDA is left to the modes' processes: a context here would hold memory)
    print("twin: PyTorch %s, device %s" % (torch.__version__, dev), flush=True)
    try:
        import torchvision
        print("twin: torchvision %s" % torchvision.__version__, flush=True)
    except ImportError:
        print("twin: torchvision missing: the model is tests/torch_ref.py's ResNet-18", flush=True)
    print("twin: resnet18 %s stem, %dx%d, batch %d, predictor %s, loss %s; %d warm-up + %d timed "
          "steps per mode, each mode at most %ds" % (a.stem, a.size, a.size, a.batch, a.predictor,
                                                     a.loss, a.warmup, a.steps, a.mode_seconds),
          flush=True)
    print("twin: views are random tensors already on the device: no augmentation in the timed "
          "step (runaway's pairs/s include its GPU-rendered views)", flush=True)
    rc = 0
    for mode in a.modes.split(","):
        if mode not in MODES:
            print("twin %s failed: unknown mode (modes: %s)" % (mode, ", ".join(MODES)), flush=True)
            rc = 1
            continue
        cmd = [sys.executable, os.path.abspath(__file__), "--one-mode", mode] + a.passthrough
        # its own session, so that a timeout also ends compile workers
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             start_new_session=True)

        def stop(signum, frame, p=p):  # stopped from outside (timeout): the mode too
            os.killpg(p.pid, signal.SIGKILL)
            sys.exit(128 + signum)
        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        try:
            out, _ = p.communicate(timeout=a.mode_seconds)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            out, _ = p.communicate()
            tail = [l for l in out.splitlines() if l.strip()][-3:]
            for l in tail:
                print("  | " + l)
            print("twin %s failed: over the mode's limit of %ds" % (mode, a.mode_seconds),
                  flush=True)
            rc = 1
            continue
        lines = out.splitlines()
        ours = [l for l in lines if l.startswith("twin %s " % mode)]
        if not any(" pairs/s " in l or " failed: " in l for l in ours):
            tail = [l for l in lines if l.strip()][-8:]
            for l in tail:
                print("  | " + l)
            reason = tail[-1].strip() if tail else "no output"
            print("twin %s failed: exit %d: %s" % (mode, p.returncode, reason[:200]), flush=True)
            rc = 1
            continue
        for l in lines:
            if l.startswith("twin"):
                print(l, flush=True)
        if any(" failed: " in l for l in ours):
            rc = 1
    return rc


# ------------------------------------------------------------------ check

def check(wpath, spath, apath):
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
    from torch_ref import read_st

    weights, meta = read_st(wpath)
    step, _ = read_st(spath)
    after, _ = read_st(apath)
    stem, width, ph, pout, pred, qh = map(int, meta["runaway.model"].split())
    kind, alpha, beta, tan = meta["runaway.loss"].split()
    if int(meta.get("runaway.classes", "0")):
        sys.exit("torch_twin: the supervised baseline is not a twin's step")
    if width != 64:
        sys.exit("torch_twin: width %d: torchvision's resnet18 is width 64" % width)
    loss_cfg = ("byol" if int(kind) == 0 else "unified", float(alpha), float(beta), int(tan))

    torch.manual_seed(0)
    online = build_online(STEMS[stem], ph, pout, PREDICTORS[pred], qh)
    if online.twin_note != "torchvision resnet18":  # 77: skipped, as without torch
        print("torch_twin: --check checks the twin as it runs: torchvision is not installed",
              file=sys.stderr)
        return 77
    teacher = make_teacher(online)
    online.load_state_dict({k: v for k, v in weights.items() if not k.startswith("teacher.")})
    teacher.load_state_dict({k[8:]: v for k, v in weights.items() if k.startswith("teacher.")})
    online.train()
    teacher.train()

    ts = TwinStep(online, teacher, loss_cfg)
    # Adam's state as runaway had it before this step (non-zero, so that the
    # update depends on the gradient's size, betas and bias correction, not
    # only on its sign as a first step would). The file's tensors are ours
    # to update in place.
    k = float(step["adam.step"].reshape(-1)[0])
    for name, prm in online.named_parameters():
        ts.opt.state[prm] = {"step": torch.tensor(k), "exp_avg": step["adam.m." + name],
                             "exp_avg_sq": step["adam.v." + name]}
    loss = ts.forward_backward(step["x1"], step["x2"])
    grads = {n: (p.grad.clone() if p.grad is not None else torch.zeros_like(p))
             for n, p in online.named_parameters()}
    # The update from runaway's gradients: Adam and the EMA are then checked
    # tightly whatever a ReLU at its kink did to the gradients (below).
    for n, p in online.named_parameters():
        p.grad = step["grad." + n].clone()
    ts.update()
    twin = dict(online.state_dict())
    twin.update({"teacher." + k: v for k, v in teacher.state_dict().items()})

    # Tolerances. Both sides compute in float32 with different convolution
    # and GEMM orders, so every tensor differs by rounding carried through
    # ~20 layers with batch statistics: measured <= 2e-6 relative for the
    # loss, <= 3e-5 for BN statistics and, mostly, for gradients
    # (tests/test_model.c). But a pre-activation within rounding of 0 is a
    # ReLU's kink: one float32 implementation lets the gradient through,
    # another not, and the batch norms spread that element over its
    # channel and the layers below. Measured on byol/mlp/cifar (seed 11):
    # 1.1e-2 relative in every gradient below layer4, between two runaway
    # builds of which one matched float64 PyTorch (tests/torch_ref.py) to
    # 1e-5 and the other, like this twin, sat on the other side. So
    # gradients are held to 3e-2: a lost term, a sign or a factor is O(1).
    # The update ran from runaway's gradients, so a wrong step there is off
    # by 1e-2 or more (tau 0.9961 for 0.996: 3e-2 of the teacher's change)
    # and mostly by O(1) against a tolerance of 1e-3. What the step changed is
    # compared with the change, not the value: a weight moves by ~lr, a
    # teacher tensor by (1-tau)|theta - xi|, far below the values, so 2 ulp
    # of the value are allowed on top (each side rounds what it stores, the
    # EMA twice); that rounding is all of the measured 5e-4 of a change.
    tol = {"loss": 1e-5, "grad": 3e-2, "param": 1e-3, "teacher": 1e-3, "stat": 1e-3}
    ULP = 2.0 ** -23  # float32's relative spacing
    rows = []  # (error over tolerance, kind, name, error)

    ours_loss = float(step["loss"].reshape(-1)[0])
    e = abs(ours_loss - loss.item()) / max(1.0, abs(loss.item()))
    rows.append((e / tol["loss"], "loss", "loss", e))
    print("loss: runaway %.7f  twin %.7f" % (ours_loss, loss.item()))

    # Biases whose exact gradient is zero (a shift that the following BN
    # removes) hold rounding noise on both sides: compared with the typical
    # size of a gradient of that many elements instead of their own norm.
    zero_grad = {"projector.0.bias"}
    if PREDICTORS[pred] == "mlp_bn":  # predictor Linear -> BN
        zero_grad |= {"projector.3.bias", "predictor.0.bias"}
    # (float32 arithmetic is enough here: a difference of two close floats
    # is exact, and a norm's rounding is ~1e-6 relative.)
    typical = (sum(g.norm().item() ** 2 for g in grads.values()) /
               sum(g.numel() for g in grads.values())) ** 0.5
    for name, g in grads.items():
        err = (step["grad." + name] - g).norm().item()
        base = typical * g.numel() ** 0.5 if name in zero_grad else g.norm().item()
        e = err / base if base > 0 else err
        rows.append((e / tol["grad"], "grad", name, e))

    for name, t in twin.items():
        if name not in after:
            rows.append((float("inf"), "missing", name, float("nan")))
            continue
        if name.endswith("num_batches_tracked"):  # one per view's forward pass
            e = abs(int(after[name].reshape(-1)[0]) - int(t.reshape(-1)[0]))
            rows.append((float("inf") if e else 0.0, "count", name, e))
            continue
        kd = "stat" if "running_" in name else "teacher" if name.startswith("teacher.") else "param"
        change = (t - weights[name]).norm().item()  # weights: the state before the step
        err = (after[name] - t).norm().item()
        e = err / change if change > 0 else err
        allowed = tol[kd] * change + 2 * ULP * t.norm().item()
        rows.append((err / allowed if allowed > 0 else err, kd, name, e))

    worst = {}
    for r in rows:
        if r[1] not in worst or r[0] > worst[r[1]][0]:
            worst[r[1]] = r
    for kd in ("loss", "grad", "param", "teacher", "stat", "count", "missing"):
        if kd in worst:
            r = worst[kd]
            n = sum(1 for x in rows if x[1] == kd)
            print("%-8s %3d tensors, worst %.3e relative, %.3f of its tolerance (%s): %s"
                  % (kd, n, r[3], r[0], "%.0e" % tol[kd] if kd in tol else "exact", r[2]))
    bad = sorted((r for r in rows if r[0] > 1.0), reverse=True)
    if bad:
        for r in bad[:10]:
            print("MISMATCH %s %s: %.3e" % (r[1], r[2], r[3]))
        print("torch_twin --check: %d of %d tensors disagree; worst: %s %s"
              % (len(bad), len(rows), bad[0][1], bad[0][2]))
        return 1
    print("torch_twin --check: the twin's step is runaway's (%d tensors)" % len(rows))
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bench", action="store_true")
    ap.add_argument("--check", nargs=3, metavar=("WEIGHTS", "STEP", "AFTER"))
    ap.add_argument("--one-mode", help=argparse.SUPPRESS)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--modes", default="fp32,tf32,bf16,compile")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--stem", choices=("imagenet", "cifar"), default="imagenet")
    ap.add_argument("--predictor", choices=("mlp", "mlp_bn", "linear", "linear_identity", "none"),
                    default="mlp")
    # runaway-bench trains RAFT (alpha 1, beta -1); the loss is a sliver of the step
    ap.add_argument("--loss", choices=tuple(LOSSES), default="raft")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--mode-seconds", type=int,
                    default=int(os.environ.get("RW_TWIN_MODE_S", "150")))
    a = ap.parse_args()
    if a.check:
        sys.exit(check(*a.check))
    # what a mode's own process is given again
    a.passthrough = ["--device", a.device, "--batch", str(a.batch), "--size", str(a.size),
                     "--stem", a.stem, "--predictor", a.predictor, "--loss", a.loss,
                     "--steps", str(a.steps), "--warmup", str(a.warmup),
                     "--mode-seconds", str(a.mode_seconds)]
    if a.one_mode:
        try:
            bench_one(a, a.one_mode)
        except Unavailable as e:
            print("twin %s failed: %s" % (a.one_mode, e), flush=True)
        except Exception as e:  # noqa: BLE001 -- any failure is this mode's, said in its line
            msg = ("%s: %s" % (type(e).__name__, e)).replace("\n", " ")
            print("twin %s failed: %s" % (a.one_mode, msg[:300]), flush=True)
        return
    if a.bench:
        sys.exit(bench(a))
    ap.print_help()
    sys.exit(2)


if __name__ == "__main__":
    main()
