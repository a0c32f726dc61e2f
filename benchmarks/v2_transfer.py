"""nnU-Net v2 weights in nnpipe's U-Net (``training.init_weights: <v2 model>``): how close
is the network fine-tuning starts from to the v2 network it came from?

Not part of CI (it needs v2 models). For each v2 trained-model folder given, fold 0 (or
the first): the v2 network as nnpipe builds it for prediction (:mod:`nnpipe.v2.network`,
every weight loaded) and nnpipe's U-Net holding the mapped weights
(:func:`nnpipe.v2.transfer.nnpipe_weights`) run on the same seeded random patch (the v2
plan's patch size, axes permuted as the mapping permutes them). The two differ only by the
biases nnpipe's U-Net has no place for (the transposed convolutions'; the other convolution
biases are cancelled by the instance norm after each), which the second row of each model
zeroes to show the rest maps exactly::

    python -m benchmarks.v2_transfer results/Dataset001_X/nnUNetTrainer__nnUNetPlans__2d
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import torch

from nnpipe.model.unet import UNet
from nnpipe.v2.checkpoint import load_v2_checkpoint
from nnpipe.v2.network import build_network, load_weights
from nnpipe.v2.transfer import axis_map, nnpipe_weights, open_v2


def compare(folder: Path, zero_transposed_bias: bool, seed: int = 0) -> dict[str, object]:
    """Max |logit difference| and argmax agreement of v2's network and nnpipe's U-Net with
    the mapped weights on one random patch."""
    dim = 2 if folder.name.endswith("__2d") else 3
    with open_v2(folder, dim, 0) as src:
        config = src.configuration
        assert src.checkpoint is not None  # asked for with a fold
        weights = dict(load_v2_checkpoint(src.checkpoint).weights)
    if zero_transposed_bias:
        weights = {k: torch.zeros_like(v) if "transpconvs" in k and k.endswith("bias") else v
                   for k, v in weights.items()}
    v2 = build_network(config.architecture, config.arch_kwargs, config.input_channels,
                       config.semantics.num_outputs).eval()
    load_weights(v2, weights, str(folder))
    mapped, unplaced = nnpipe_weights(weights, config, str(folder))
    perm, _ = axis_map(config)
    kw = config.arch_kwargs

    def permuted(values: Sequence[Sequence[int]]) -> list[tuple[int, ...]]:
        return [tuple(int(v[p]) for p in perm) for v in values]

    net = UNet(dim, config.input_channels, config.semantics.num_outputs,
               permuted(kw["kernel_sizes"]), permuted(kw["strides"]),
               [int(f) for f in kw["features_per_stage"]]).eval()
    own = net.state_dict()
    net.load_state_dict({k: v for k, v in mapped.items() if k in own}, strict=True)
    torch.manual_seed(seed)
    x = torch.randn(1, config.input_channels, *config.semantics.patch_size)
    with torch.no_grad():
        a = v2(x)
        b = net(x.permute(0, 1, *[2 + p for p in perm]))
        b = b.permute(0, 1, *[2 + perm.index(k) for k in range(dim)])
    return {"max_logit_diff": float((a - b).abs().max()),
            "argmax_agree": float((a.argmax(1) == b.argmax(1)).float().mean()),
            "unplaced": len(unplaced), "patch": tuple(config.semantics.patch_size)}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+", type=Path,
                        help="v2 trained-model folders (<Trainer>__<Plans>__<configuration>)")
    args = parser.parse_args(argv)
    print("| model | patch | transposed-conv biases | max abs logit diff | argmax agree | "
          "tensors without a place |")
    print("|---|---|---|---|---|---|")
    for folder in args.models:
        for zero in (False, True):
            r = compare(folder, zero)
            print(f"| {folder.parent.name}/{folder.name} | {r['patch']} | "
                  f"{'zeroed' if zero else 'as trained'} | {r['max_logit_diff']:.2e} | "
                  f"{100 * float(str(r['argmax_agree'])):.3f} % | {r['unplaced']} |")


if __name__ == "__main__":
    main()
