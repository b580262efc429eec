"""Specs shared by the backend test suites (tests/ is on sys.path: it holds the root conftest)."""

from __future__ import annotations

import dataclasses

from effv2_spec.architecture import ArchitectureSpec
from effv2_spec.documents import parse_obj
from effv2_spec.resolve import InitRule, ResolvedModel


def tiny_spec(**conventions) -> ArchitectureSpec:
    """Three stages (fused expand-1, fused with SE, MBConv k5 with SE), four blocks: quick to build,
    compile (torch.compile, XLA) and export; dropout and drop path on."""
    doc = {
        "name": "tiny", "num_classes": 5,
        "input": {"channels": 3, "train_image_size": 16, "eval_image_size": 16},
        "stem": {"kernel": 3, "stride": 2, "channels": 8},
        "stages": [
            {"type": "fused_mbconv", "kernel": 3, "stride": 1, "expand_ratio": 1.0, "out_channels": 8, "repeats": 1},
            {"type": "fused_mbconv", "kernel": 3, "stride": 2, "expand_ratio": 2.0, "out_channels": 16, "repeats": 1,
             "se_ratio": 0.25},
            {"type": "mbconv", "kernel": 5, "stride": 2, "expand_ratio": 3.0, "out_channels": 16, "repeats": 2,
             "se_ratio": 0.25},
        ],
        "head": {"channels": 32, "dropout": 0.3},
        "conventions": {"stochastic_depth": {"rate": 0.4}, **conventions},
    }
    return parse_obj(doc, ArchitectureSpec)


def constant_inits_flipped(resolved: ResolvedModel) -> ResolvedModel:
    """`resolved` with every constant init rule flipped (ones <-> zeros: zero-gamma BN as timm's
    `zero_init_last`, unit biases, zero running means swapped for ones ...): what an init convention
    changes. No spec field sets these yet, so the table is edited where resolve would write it."""
    flip = {"ones": "zeros", "zeros": "ones"}
    params = tuple(dataclasses.replace(p, init=InitRule(flip[p.init.kind])) if p.init.kind in flip else p
                   for p in resolved.params)
    return dataclasses.replace(resolved, params=params, _by_name={p.name: p for p in params})
