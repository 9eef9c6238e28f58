"""``aid``: Adaptive Instance Distillation (Lan & Tian, "Adaptive Instance Distillation for Object Detection in
Autonomous Driving", ICPR 2022, arXiv 2201.11097), a *modifier*: it adds no term but reweights the terms of the methods
it is combined with (``method=fgd+aid``, ``ld+aid``, ...; ``method=aid`` alone is ``fkd+aid``, the paper's setting;
combination rules in ``yolokd.methods.compose``).

Spec: ``../shared/docs/methods.md`` §3.1-3.2 (formula, paper vs code granularity), §6.4 (the teacher's per-instance
losses with Ultralytics' TAL), §6.5 (AID on YOLO), §6.8 (nan_to_num). Each instance i gets

    w_i = exp(-alpha * D_i),

D_i the **teacher's** own detection loss on that instance (``KDBatch.teacher_losses``, computed once per batch by the
criterion from the teacher's head outputs and its own task-aligned assignment, see ``yolokd/engine/providers.py``),
detached. An instance the teacher gets right keeps its distillation; one it gets wrong is distilled less. The terms
``cls+box`` (default; the code's one-stage choice: no DFL, §3.2) or ``cls+box+dfl`` each carry Ultralytics' gain.

Granularity (``granularity``, §3.2 / §6.4), and what the weights multiply:

- ``image`` (default; the paper's "instance" read as an image): D[n] is image n's loss, exactly ``v8DetectionLoss`` of
  the teacher on that image alone; every (N, L) term row n is multiplied by w_n.
- ``image_level`` ("scale-wise"): D[n, l] is the share of image n's loss on level l's anchors (the image's normaliser,
  so the shares add up to D[n]); term[n, l] is multiplied by w_{n,l}.
- ``batch_level`` (the released code's choice): D[l] is level l's share of the batch's loss; column l of every term is
  multiplied by w_l. (The code's FGD wrapper used level 0's weight on every level, §3.2: not copied.)
- ``object``: D[g] is the loss over the teacher positives assigned to GT box g (``InstanceLosses.per_object``; a box
  with none takes its image's D). The weights reach methods through ``KDBatch.instance_weights``: those with object
  regions weight each box's mask region by w_g in the terms they list in ``object_terms`` (FGD's ``fgd_fg``, GKD's
  ``gkd_box``, and ``gkd_map`` with ``variant=gmask``), where the box that defines a cell's mask value gives its
  weight. Every other term (background, attention, global terms, and all terms of methods without object regions:
  mimic, ultralytics, ld, cwd, pkd, mgd, fkd) gets the image weight w_n of ``image`` granularity (§6.5), so that the
  per-object setting never silently leaves a term unweighted.

Decisions:

- **alpha** 0.1 (the paper and every variant of the released code, §3.1). Ultralytics' gained losses are larger than
  mmdet's GFL losses (a converged teacher shows a few units per image against about 1, §6.5), so the same alpha gives
  smaller weights here: check the ``aid/w_mean``, ``aid/w_min``, ``aid/w_max`` columns of results.csv (this epoch's
  weights at the chosen granularity; the objects' at ``object``) and lower alpha if they sit near 0.
- **normalize** (off by default, in neither the paper nor the code, §6.5): divide the batch's weights by their mean, so
  the overall KD magnitude does not drift with the teacher's loss; weights may then exceed 1.
- **Non-finite teacher losses** (§6.8): NaN counts as 0 (weight 1) and +inf as the largest float (weight 0). The
  losses are >= 0, so without ``normalize`` w lies in (0, 1] (0 only for a loss beyond ~100 / alpha, where exp
  underflows fp32).
"""

from __future__ import annotations

import torch
from torch import Tensor

from yolokd.methods.base import KDBatch, KDModifier, Reweighting, choice, coefficients, flag

GRANULARITIES = ("image", "image_level", "object", "batch_level")
#: Spellings of ``terms`` and the ``InstanceLosses`` terms they add up.
TERM_SETS = {"cls+box": ("cls", "box"), "cls+box+dfl": ("cls", "box", "dfl")}


class AID(KDModifier):
    """Weights each image, level or object's distillation by exp(-alpha x the teacher's own loss on it)."""

    name = "aid"
    needs = frozenset({"teacher_instance_losses"})
    base = "fkd"
    stats_names = ("aid/w_mean", "aid/w_min", "aid/w_max")

    def __init__(self, alpha: float, granularity: str, terms: str, normalize: bool) -> None:
        """Validate the hyperparameters; the weight statistics of the epoch start empty."""
        super().__init__()
        (self.alpha,) = coefficients(self.name, alpha=alpha)
        self.granularity = choice(self.name, "granularity", granularity, GRANULARITIES)
        self.terms = TERM_SETS[choice(self.name, "terms", terms, TERM_SETS)]
        self.normalize = flag(self.name, "normalize", normalize)
        self._stats: list[Tensor] = []

    def weights(self, losses: Tensor) -> Tensor:
        """exp(-alpha * D), detached, non-finite D replaced first, optionally divided by the batch's mean weight."""
        d = torch.nan_to_num(losses.detach().float(), nan=0.0)
        w = torch.exp(-self.alpha * d)
        if self.normalize and w.numel():
            w = w / w.mean().clamp(min=torch.finfo(w.dtype).tiny)
        return w

    def weigh(self, kd: KDBatch) -> Reweighting:
        """The weights of this batch at the chosen granularity (see the module docstring)."""
        losses = kd.teacher_losses
        if losses is None:
            raise ValueError("modifier 'aid' needs teacher_losses in its KDBatch (KDCriterion provides them for "
                             "methods that declare teacher_instance_losses in `needs`)")
        if self.granularity == "object":
            objects = self.weights(losses.per_object(self.terms, kd.batch["batch_idx"]))
            out = Reweighting(image=self.weights(losses.per_image(self.terms))[:, None], objects=objects)
            self._record(objects)
            return out
        if self.granularity == "image":
            w = self.weights(losses.per_image(self.terms))[:, None]
        elif self.granularity == "image_level":
            w = self.weights(losses.per_image_level(self.terms))
        else:
            w = self.weights(losses.per_batch_level(self.terms))[None]
        self._record(w)
        return Reweighting(image=w)

    def _record(self, w: Tensor) -> None:
        """Keep (sum, count, min, max) of this batch's weights on their device (no sync per iteration)."""
        if w.numel():
            self._stats.append(torch.stack([w.sum(), w.new_tensor(w.numel()), w.min(), w.max()]))

    def epoch_stats(self) -> dict[str, float]:
        """``aid/w_mean``, ``aid/w_min``, ``aid/w_max`` of the weights since the last call (NaN if none), then reset."""
        values = [float("nan")] * 3
        if self._stats:
            s = torch.stack(self._stats).cpu()
            values = [float(s[:, 0].sum() / s[:, 1].sum()), float(s[:, 2].min()), float(s[:, 3].max())]
        self._stats = []
        return dict(zip(self.stats_names, values))
