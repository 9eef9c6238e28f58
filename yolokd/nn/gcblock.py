"""GcBlock: the global-context relation module that FGD's global loss compares (Cao et al., GCNet, 2019).

FGD (Yang et al., CVPR 2022, ``../shared/docs/methods.md`` §1.4 item 3) passes the teacher feature and the adapted
student feature through two separate, trainable GcBlocks and pulls their outputs together. A GcBlock adds one
image-wide context vector to every position:

    R(F) = F + V2(ReLU(LN(V1(ctx)))),   ctx[n, :] = sum_ij softmax_ij(K F)[n, i, j] * F[n, :, i, j]

with K a 1x1 conv C -> 1 (Kaiming normal, fan_in), V1 a 1x1 conv C -> C*ratio, LN a LayerNorm over (C*ratio, 1, 1)
and V2 a 1x1 conv back to C whose weight and bias start at zero, so R starts as the identity.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class GcBlock(nn.Module):
    """Global-context block with attention pooling and a channel-add transform (zero-initialised last layer).

    Attributes:
        key: 1x1 conv C -> 1, the spatial attention logits of the context pooling.
        transform: 1x1 conv C -> hidden, LayerNorm, ReLU, 1x1 conv hidden -> C (the last one zero at init).
    """

    def __init__(self, channels: int, ratio: float = 0.5) -> None:
        """Build the block for ``channels`` input channels, with a bottleneck of ``channels * ratio`` (at least 1)."""
        super().__init__()
        hidden = max(1, int(channels * ratio))
        self.key = nn.Conv2d(channels, 1, kernel_size=1)
        self.transform = nn.Sequential(
            nn.Conv2d(channels, hidden, kernel_size=1),
            nn.LayerNorm([hidden, 1, 1]),
            nn.ReLU(),
            nn.Conv2d(hidden, channels, kernel_size=1),
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Kaiming normal (fan_in) for the key conv, zeros for the last conv: the block starts as the identity."""
        nn.init.kaiming_normal_(self.key.weight, mode="fan_in", nonlinearity="relu")
        nn.init.zeros_(self.key.bias)
        last = self.transform[-1]
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)

    def context(self, x: Tensor) -> Tensor:
        """Attention-pooled context (N, C, 1, 1): the softmax over all H*W positions of ``key(x)`` weights ``x``."""
        n, c, h, w = x.shape
        attn = torch.softmax(self.key(x).view(n, 1, h * w), dim=-1)  # (N, 1, HW)
        return torch.bmm(x.reshape(n, c, h * w), attn.transpose(1, 2)).view(n, c, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        """``x`` plus the transformed context, broadcast over every position."""
        return x + self.transform(self.context(x))
