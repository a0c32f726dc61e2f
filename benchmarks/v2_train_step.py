"""nnU-Net v2's training step, timed in nnU-Net v2's own virtual environment.

Run by :mod:`benchmarks.train_step_compare` as ``<v2 venv>/bin/python
benchmarks/v2_train_step.py --spec JSON``; it imports ``nnunetv2`` and therefore never runs in
nnpipe's environment (nnpipe never imports nnU-Net). It builds what ``nnUNetTrainer`` builds
for one configuration of a plans file (nnunetv2 2.8.1):

* the network: ``get_network_from_plans`` with the configuration's architecture, deep
  supervision on, v2's weight initialisation (``nnUNetTrainer.build_network_architecture``);
* the loss: ``DC_and_CE_loss`` (``MemoryEfficientSoftDiceLoss``, ``do_bg`` False, smooth
  1e-5, the plans' ``batch_dice``) in a ``DeepSupervisionWrapper`` with weights 1/2^i, the
  lowest output's set to 0, normalised (``nnUNetTrainer._build_loss``);
* the optimizer: SGD, lr 1e-2, momentum 0.99, Nesterov, weight decay 3e-5
  (``nnUNetTrainer.configure_optimizers``);
* the step: ``nnUNetTrainer.train_step`` on the CPU: zero_grad, forward, loss, backward,
  gradient clipping at norm 12, optimizer step, the loss read back to the host.

The batch is random and fixed, with its deep-supervision targets downsampled once (nearest)
before timing: v2 makes them in its data-augmentation worker processes, off the step's
thread. Prints one JSON line: ``{"tool": "nnunetv2", "step_s": [...], ...}``.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
import torch.nn.functional as F
from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans


def build(cfg: dict, in_channels: int, num_classes: int) -> tuple:
    """Network, loss and optimizer as ``nnUNetTrainer`` builds them for configuration
    ``cfg`` (a plans file's ``configurations`` entry)."""
    arch = cfg["architecture"]
    net = get_network_from_plans(arch["network_class_name"], arch["arch_kwargs"],
                                 arch["_kw_requires_import"], in_channels, num_classes,
                                 allow_init=True, deep_supervision=True)
    loss = DC_and_CE_loss({"batch_dice": cfg["batch_dice"], "smooth": 1e-5, "do_bg": False,
                           "ddp": False}, {}, weight_ce=1, weight_dice=1, ignore_label=None,
                          dice_class=MemoryEfficientSoftDiceLoss)
    strides = np.vstack(arch["arch_kwargs"]["strides"])
    scales = list(list(i) for i in 1 / np.cumprod(strides, axis=0))[:-1]
    weights = np.array([1 / (2**i) for i in range(len(scales))])
    weights[-1] = 0
    loss = DeepSupervisionWrapper(loss, weights / weights.sum())
    opt = torch.optim.SGD(net.parameters(), 1e-2, weight_decay=3e-5, momentum=0.99,
                          nesterov=True)
    return net, loss, opt, scales


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--spec", required=True, help="JSON: plans, configuration, in_channels, "
                   "num_classes, threads, warmup, steps, seed[, clock]")
    spec = json.loads(p.parse_args().spec)
    torch.set_num_threads(spec["threads"])
    torch.manual_seed(spec["seed"])
    with open(spec["plans"]) as f:
        cfg = json.load(f)["configurations"][spec["configuration"]]
    net, loss_fn, opt, scales = build(cfg, spec["in_channels"], spec["num_classes"])
    net.train()
    shape = (cfg["batch_size"], spec["in_channels"], *cfg["patch_size"])
    data = torch.randn(shape)
    seg = torch.randint(0, spec["num_classes"], (shape[0], 1, *shape[2:])).float()
    target = [seg if all(s == 1 for s in sc) else F.interpolate(
        seg, [round(n * s) for n, s in zip(shape[2:], sc, strict=True)], mode="nearest")
        for sc in scales]

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        out = net(data)
        loss = loss_fn(out, target)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 12)
        opt.step()
        return float(loss.detach().cpu().numpy())

    for _ in range(spec["warmup"]):
        step()
    # "process": this process's CPU seconds (with one thread, the work a step does, nearly
    # blind to other jobs on a shared machine); default: wall-clock seconds
    clock = time.process_time if spec.get("clock") == "process" else time.perf_counter
    times = []
    for _ in range(spec["steps"]):
        t0 = clock()
        step()
        times.append(clock() - t0)
    print(json.dumps({"tool": "nnunetv2", "step_s": times, "threads": torch.get_num_threads(),
                      "batch_size": shape[0], "patch_size": list(shape[2:]),
                      "torch": torch.__version__}))


if __name__ == "__main__":
    main()
