"""Conv2d -> BatchNorm2d (eval) -> ReLU/ReLU6 blocks with the same forward and a shorter backward.

The forward calls the block's own modules in order, so its output is bit-identical to the original
network's. The backward is written out: the activation's mask, the BatchNorm's per-channel scale and the
convolution's input gradient, in one pass per block instead of three autograd nodes, and only the input
(the crop) gets a gradient (the weights are frozen). Saved for backward: the block input and a boolean
mask instead of three activations. Gradients agree with autograd's to float32 rounding (~1e-6 relative;
test_fastpath.py), because the forward, and so every ReLU decision, is the same.

Only eval-mode blocks inside ``nn.Sequential`` containers are rewritten (torchvision's MobileNetV2, the
DeepSORT encoder); anything else is left as it is.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

_ACTS = (nn.ReLU, nn.ReLU6)


class _BlockFn(torch.autograd.Function):
    """conv -> bn -> act forward by the modules themselves; backward mask * scale -> conv input gradient."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, block: FusedConvBNAct) -> torch.Tensor:
        y = block.bn(block.conv(x))
        mask = None
        if block.act is not None:
            y = block.act(y)
            mask = (y > 0) & (y < 6) if isinstance(block.act, nn.ReLU6) else y > 0
        ctx.block, ctx.mask = block, mask
        ctx.save_for_backward(x)
        return y

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, None]:
        (x,) = ctx.saved_tensors
        block = ctx.block
        g = grad * block.scale()
        if ctx.mask is not None:
            g = g.masked_fill(~ctx.mask, 0.0)
        conv = block.conv
        gx = torch.ops.aten.convolution_backward(
            g, x, conv.weight, None, conv.stride, conv.padding, conv.dilation, False, [0, 0], conv.groups,
            [True, False, False])[0]
        return gx, None


class FusedConvBNAct(nn.Module):
    """One Conv2d + BatchNorm2d (+ ReLU/ReLU6) block computed through ``_BlockFn`` (eval mode only)."""

    def __init__(self, conv: nn.Conv2d, bn: nn.BatchNorm2d, act: nn.Module | None) -> None:
        super().__init__()
        self.conv, self.bn, self.act = conv, bn, act

    def scale(self) -> torch.Tensor:
        """BatchNorm's eval-mode factor gamma / sqrt(var + eps), as [1,C,1,1]."""
        bn = self.bn
        w = bn.weight if bn.weight is not None else torch.ones_like(bn.running_var)
        return (w / torch.sqrt(bn.running_var + bn.eps)).view(1, -1, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training or not torch.is_grad_enabled() or not x.requires_grad:
            y = self.bn(self.conv(x))
            return self.act(y) if self.act is not None else y
        return _BlockFn.apply(x, self)


def _fusable(conv: nn.Module, bn: nn.Module) -> bool:
    return (isinstance(conv, nn.Conv2d) and type(bn) is nn.BatchNorm2d and conv.padding_mode == "zeros"
            and isinstance(conv.padding, tuple) and bn.track_running_stats and bn.running_var is not None
            and conv.out_channels == bn.num_features)


def fuse_backward(module: nn.Module) -> tuple[nn.Module, int]:
    """An eval copy of ``module`` with every Sequential run Conv2d, BatchNorm2d[, ReLU/ReLU6] fused; (copy, count)."""
    net = copy.deepcopy(module).eval()
    count = 0
    for seq in [m for m in net.modules() if isinstance(m, nn.Sequential)]:
        items = list(seq._modules.items())
        out: list[tuple[str, nn.Module]] = []
        i = 0
        while i < len(items):
            name, mod = items[i]
            if i + 1 < len(items) and _fusable(mod, items[i + 1][1]):
                act = items[i + 2][1] if i + 2 < len(items) and type(items[i + 2][1]) in _ACTS else None
                out.append((name, FusedConvBNAct(mod, items[i + 1][1], act)))
                i += 3 if act is not None else 2
                count += 1
            else:
                out.append((name, mod))
                i += 1
        seq._modules.clear()
        seq._modules.update(out)
    return net, count
