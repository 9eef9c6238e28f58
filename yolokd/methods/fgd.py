"""``fgd``: Focal and Global Distillation (Yang et al., "Focal and Global Knowledge Distillation for Detectors",
CVPR 2022), on the three neck levels that feed Detect (P3/P4/P5).

Spec: ``../shared/docs/methods.md`` §1 (FGD), §6.2 (loss scale), §6.3 (FGD on YOLO), §6.8 (pitfalls). Per level l,
with F^T the teacher feature, phi(F^S) the adapted student feature, both (N, C_T, H, W), and D = (F^T - phi(F^S))^2:

- masks (§1.2): every GT box goes onto every level. Its extent in cells is rows floor(y1)..ceil(y2) and columns
  floor(x1)..ceil(x2), **inclusive**, clamped to the map; its scale value is S = 1 / (rows * cols). The foreground
  mask Mfg of a cell is the S of the smallest covering box (the largest S), 0 outside every box. The background mask
  Mbg is 1 on uncovered cells divided by their count, so it sums to 1 in every image that has background;
- attention (§1.3), at temperature T: A^S = H*W * softmax_ij(mean_c |F| / T), A^C = C * softmax_c(mean_ij |F| / T);
- terms per image (§1.4), each a sum over that image's elements (the official "sum / N" per image):
  ``fgd_fg`` = alpha * sum Mfg * A^S_T * A^C_T * D, ``fgd_bg`` = beta * sum Mbg * A^S_T * A^C_T * D,
  ``fgd_at`` = gamma * (sum_c |A^C_S - A^C_T| + sum_ij |A^S_S - A^S_T|),
  ``fgd_gl`` = lambda_global * sum (R_S(phi(F^S)) - R_T(F^T))^2, with R_S, R_T two separate trainable GcBlocks.

The teacher attentions and the masks are constants; the student attentions come from phi(F^S) and carry gradient.
Gradients reach the student, phi, R_S and R_T, never the teacher features (they are detached here as well).

Decisions on the points the spec leaves open (each is tested in ``tests/test_fgd.py``):

- **Adapter phi**: ``build_connectors("conv1x1", ...)``, a 1x1 conv C_S -> C_T created only where the widths differ
  and the identity where they match, as the official code does (§0, §1.1 [C-code]). Everything is computed in the
  teacher's channel space.
- **Box -> cell mapping** (§1.7 Q1/Q2, §6.3): ``batch["bboxes"]`` are normalised xywh of the batch image itself, so
  pixel coordinates are x * img_w with img_w read from ``batch["img"]``, and the level's stride is img_w / W (and
  img_h / H), from the actual tensor sizes, never a pre-padding shape. Ultralytics' batch sizes are multiples of the
  largest stride, so these are exactly 8/16/32. Floor/ceil results are clamped to [0, W-1] / [0, H-1].
- **Ties in the smallest-box rule** only matter for the instance weights (below): among covering boxes of equal
  (smallest) area, the largest weight applies.
- **Images without boxes** follow the official code (not PaddleDetection's skip): Mfg = 0 and a uniform
  Mbg = 1/(H*W), so the image still gets background, attention and global terms.
- **Maps that are entirely foreground**: Mbg = 0 everywhere (no normalisation, no division by zero), so ``fgd_bg``
  is 0 for that image and level.
- **Instance weights** (``KDBatch.instance_weights``, set by AID at ``granularity=object``, §6.5): the foreground
  value of a cell is S_j * w_j, where j is the box that defines S there (smallest box; equal areas: largest weight).
  They only scale Mfg: a cell covered by a box of weight 0 is still foreground (out of Mbg). The background, attention
  and global terms are per image and are left to the modifier's image-level weights (``object_terms``: ``fgd_fg``
  only). The weights are used as constants (detached), and None means 1, which gives exactly the official masks.
- **Ablation switches** (``use_focal``, ``use_attention``, ``use_global``): a switched-off part is not computed and
  its terms are returned as zeros, not dropped, because the term names are fixed per method (``term_names``, the
  results.csv columns). ``use_focal`` covers both ``fgd_fg`` and ``fgd_bg``. With ``use_global`` off no GcBlocks are
  built at all.
- **Multi-scale training** (§6.7): no 1/(s_h*s_w) rescaling (the method does not know the nominal imgsz). Note the
  magnitudes at a fixed scale: ``fgd_fg`` and ``fgd_bg`` do not grow with the input size (the masks sum to ~1 per box
  and to 1 per image); the spatial half of ``fgd_at`` and ``fgd_gl`` grow with H*W.
- **Precision** (§6.8): features are cast to fp32 before anything else (the criterion already runs the KD terms in
  fp32 with autocast off); fp16 inputs give the fp32 result.

Scale (§6.2): each term is per image; the trainer sums over images, which is Ultralytics' ``batch_size x`` convention,
i.e. the same KD:detection ratio as the official code's "sum / N" added to mmdet's per-batch loss.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from yolokd.methods.base import KDBatch, KDMethod, coefficients, flag, positive_temperature
from yolokd.nn.connectors import build_connectors
from yolokd.nn.gcblock import GcBlock


def box_extents(boxes: Tensor, img_hw: tuple[int, int], feat_hw: tuple[int, int],
                inclusive: bool = True) -> tuple[Tensor, ...]:
    """Cell extents of normalised xywh boxes on one level: floor of the start, ceil of the end (methods.md §1.2, §6.3).

    Args:
        boxes: (n, 4) normalised (cx, cy, w, h) of the batch image.
        img_hw: (img_h, img_w) of the batch image tensor.
        feat_hw: (H, W) of the level's feature map.
        inclusive: FGD's convention (its code marks ``wmin:wmax + 1``): the ceil'd end cell is marked too, one cell
            past the box on the right and bottom. ``False``: the end is exclusive, so the cells are exactly those the
            box overlaps (at least one), as BMFI's centred patch needs.

    Returns:
        (row_min, row_max, col_min, col_max), each (n,) long: the box covers rows row_min..row_max and columns
        col_min..col_max (inclusive), or row_min..row_max - 1 and col_min..col_max - 1 (``inclusive=False``), all
        clamped to the map.
    """
    (img_h, img_w), (h, w) = img_hw, feat_hw
    stride_y, stride_x = img_h / h, img_w / w  # from the actual tensor sizes (no pre-padding shape, quirk Q1)
    b = boxes.float()
    cx, cy, bw, bh = b[:, 0] * img_w, b[:, 1] * img_h, b[:, 2] * img_w, b[:, 3] * img_h  # pixels
    x1, x2 = (cx - bw / 2) / stride_x, (cx + bw / 2) / stride_x
    y1, y2 = (cy - bh / 2) / stride_y, (cy + bh / 2) / stride_y
    col_min = x1.floor().long().clamp(0, w - 1)
    row_min = y1.floor().long().clamp(0, h - 1)
    if inclusive:
        return row_min, y2.ceil().long().clamp(0, h - 1), col_min, x2.ceil().long().clamp(0, w - 1)
    return (row_min, torch.maximum(y2.ceil().long().clamp(1, h), row_min + 1),
            col_min, torch.maximum(x2.ceil().long().clamp(1, w), col_min + 1))


def inside_image(boxes: Tensor) -> Tensor:
    """(n,) bool: the normalised xywh box has some area inside the image.

    A box with no area inside the image (a degenerate label; Ultralytics clips its own) would otherwise be clamped onto
    the border cells by ``box_extents``: such a box marks nothing.
    """
    b = boxes.float()
    return ((b[:, 0] - b[:, 2] / 2 < 1) & (b[:, 0] + b[:, 2] / 2 > 0)
            & (b[:, 1] - b[:, 3] / 2 < 1) & (b[:, 1] + b[:, 3] / 2 > 0))


def combine_boxes(vals: Tensor, batch_idx: Tensor, n_images: int, weights: Tensor | None = None) -> Tensor:
    """Per image and cell, the largest value of that image's boxes, optionally times the winning box's weight.

    This is the overlap rule of FGD's scale mask (the smallest box has the largest S) and of BMFI's Gaussian masks
    (element-wise max), and where both apply the per-object weights of a wrapper (methods.md §6.5): the weight of the
    box that defines the value at a cell; among boxes with equal values there, the largest weight.

    Args:
        vals: (n, HW) each box's non-negative value on every cell, 0 where it does not reach.
        batch_idx: (n,) image index of each box.
        n_images: N.
        weights: Optional (n,) per-object weights, used as constants.

    Returns:
        (N, HW) fp32, 0 where no box reaches.
    """
    n, hw = vals.shape
    device = vals.device
    best = torch.zeros(n_images, hw, device=device)
    if not n:
        return best
    idx = batch_idx.view(-1).long().to(device)[:, None].expand(n, hw)
    best = best.scatter_reduce(0, idx, vals, reduce="amax", include_self=True)
    if weights is None:
        return best
    wts = weights.detach().float().view(-1).to(device)
    if wts.shape[0] != n:
        raise ValueError(f"instance_weights has {wts.shape[0]} entries for {n} boxes")
    winner = (vals > 0) & (vals == best.gather(0, idx))  # boxes that define the value at each cell they reach
    key = torch.where(winner, wts[:, None], float("-inf"))
    wmax = torch.full_like(best, float("-inf")).scatter_reduce(0, idx, key, reduce="amax", include_self=True)
    return torch.where(best > 0, best * wmax, 0.0)


def fgd_masks(
    boxes: Tensor,
    batch_idx: Tensor,
    n_images: int,
    img_hw: tuple[int, int],
    feat_hw: tuple[int, int],
    weights: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Foreground (scale) and background masks of one level, for the whole batch at once, without loops.

    Args:
        boxes: (n, 4) normalised xywh boxes of the batch (``batch["bboxes"]``).
        batch_idx: (n,) image index of each box.
        n_images: N.
        img_hw: Size of the batch image tensor.
        feat_hw: (H, W) of the level.
        weights: Optional (n,) per-object weights; the winning box's weight multiplies its foreground value.

    Returns:
        ``(fg, bg)``, each (N, H, W) fp32: fg is S of the smallest covering box (times its weight), 0 elsewhere; bg is
        1/(number of uncovered cells) on uncovered cells, and all zeros for a map that is entirely foreground.
    """
    h, w = feat_hw
    device = boxes.device
    n = boxes.shape[0]
    vals = torch.zeros(n, h * w, device=device)
    if n:
        r0, r1, c0, c1 = box_extents(boxes, img_hw, feat_hw)
        rows = torch.arange(h, device=device)
        cols = torch.arange(w, device=device)
        in_rows = (rows[None] >= r0[:, None]) & (rows[None] <= r1[:, None])  # (n, H)
        in_cols = (cols[None] >= c0[:, None]) & (cols[None] <= c1[:, None])  # (n, W)
        cover = (in_rows[:, :, None] & in_cols[:, None, :]).view(n, h * w)  # (n, HW)
        cover &= inside_image(boxes)[:, None]
        # S from the clamped extents (methods.md §6.3), i.e. the cells the box really covers. The official code takes
        # the area before cutting at the map edge, so a box ending on the last row/column (clipped mosaic labels)
        # counts one cell that does not exist there and gets a slightly smaller weight than here.
        scale = 1.0 / ((r1 - r0 + 1) * (c1 - c0 + 1)).float()  # (n,), > 0: the +1 keeps the area >= 1
        vals = torch.where(cover, scale[:, None], 0.0)
    covered = combine_boxes(vals, batch_idx, n_images)  # S of the smallest box: the mask without weights
    fg = covered if weights is None else combine_boxes(vals, batch_idx, n_images, weights)
    bg = (covered == 0).float()
    bg = bg / bg.sum(1, keepdim=True).clamp(min=1.0)  # all-foreground maps stay all zero
    return fg.view(n_images, h, w), bg.view(n_images, h, w)


def attention(feat: Tensor, temperature: float) -> tuple[Tensor, Tensor]:
    """FGD's spatial (N, H, W) and channel (N, C) attention of ``feat``, with means 1 (methods.md §1.3)."""
    n, c, h, w = feat.shape
    a = feat.abs()
    spatial = h * w * torch.softmax(a.mean(1).view(n, h * w) / temperature, dim=1)
    channel = c * torch.softmax(a.mean((2, 3)) / temperature, dim=1)
    return spatial.view(n, h, w), channel


def focal_error(fs: Tensor, ft: Tensor, att_spatial_t: Tensor, att_channel_t: Tensor) -> Tensor:
    """(N, H, W): sum_c A^C_T * (F^T - F^S)^2, times A^S_T: the teacher-attention weighted error per cell (§1.4)."""
    return ((fs - ft).pow(2) * att_channel_t[:, :, None, None]).sum(1) * att_spatial_t


def attention_l1(fs: Tensor, att_spatial_t: Tensor, att_channel_t: Tensor, temperature: float) -> Tensor:
    """(N,): FGD's attention loss sum_c |A^C_S - A^C_T| + sum_ij |A^S_S - A^S_T|, the student's from ``fs`` (§1.4)."""
    att_spatial_s, att_channel_s = attention(fs, temperature)
    return (att_channel_s - att_channel_t).abs().sum(1) + (att_spatial_s - att_spatial_t).abs().sum((1, 2))


class FGD(KDMethod):
    """Focal (GT-box masked, teacher-attention weighted) and global (GcBlock relation) feature distillation."""

    name = "fgd"
    term_names = ("fgd_fg", "fgd_bg", "fgd_at", "fgd_gl")
    object_terms = frozenset({"fgd_fg"})  # the foreground mask is where instance weights act

    def __init__(
        self,
        student_channels: list[int],
        teacher_channels: list[int],
        alpha: float,
        beta: float,
        gamma: float,
        lambda_global: float,
        temperature: float,
        use_focal: bool,
        use_attention: bool,
        use_global: bool,
    ) -> None:
        """Build phi (1x1 conv where widths differ) per level, and two GcBlocks per level when the global term is on."""
        super().__init__(student_channels, teacher_channels)
        self.alpha, self.beta, self.gamma, self.lambda_global = coefficients(
            self.name, alpha=alpha, beta=beta, gamma=gamma, lambda_global=lambda_global)
        self.temperature = positive_temperature(self.name, temperature)
        self.use_focal = flag(self.name, "use_focal", use_focal)
        self.use_attention = flag(self.name, "use_attention", use_attention)
        self.use_global = flag(self.name, "use_global", use_global)
        self.connectors = build_connectors("conv1x1", student_channels, teacher_channels)
        if self.use_global:
            self.gc_student = nn.ModuleList(GcBlock(c) for c in teacher_channels)
            self.gc_teacher = nn.ModuleList(GcBlock(c) for c in teacher_channels)

    def forward(self, kd: KDBatch) -> dict[str, Tensor]:
        """Return the four ``{term: (N, L)}`` tensors; switched-off parts are zeros."""
        batch = kd.batch
        n = kd.batch_size
        img_hw = tuple(batch["img"].shape[-2:])
        boxes = batch["bboxes"]
        batch_idx = batch["batch_idx"]
        per_level = []
        for lvl, (conn, s, t) in enumerate(zip(self.connectors, kd.student_feats, kd.teacher_feats)):
            self.check_level(lvl, s, t)
            fs = conn(s.float())
            ft = t.detach().float()
            zero = fs.new_zeros(n)
            fg = bg = at = gl = zero
            if self.use_focal or self.use_attention:
                att_s_t, att_c_t = attention(ft, self.temperature)
            if self.use_focal:
                m_fg, m_bg = fgd_masks(boxes.to(fs.device), batch_idx, n, img_hw, tuple(ft.shape[-2:]),
                                       kd.instance_weights)
                err = focal_error(fs, ft, att_s_t, att_c_t)
                fg = self.alpha * (err * m_fg).sum((1, 2))
                bg = self.beta * (err * m_bg).sum((1, 2))
            if self.use_attention:
                at = self.gamma * attention_l1(fs, att_s_t, att_c_t, self.temperature)
            if self.use_global:
                rel = self.gc_student[lvl](fs) - self.gc_teacher[lvl](ft)
                gl = self.lambda_global * rel.pow(2).sum((1, 2, 3))
            per_level.append((fg, bg, at, gl))
        return self.stack_levels(per_level)
