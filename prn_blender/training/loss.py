"""Training loss (Feng et al., ECCV 2018, section 3.3, eq. 1) and a landmark NME for logging.

Loss = sum over texels of W(u, v) * ||P(u, v) - P~(u, v)||^2 / sum of W, with W the layout's
weight mask (landmarks 16 : eyes/nose/mouth 4 : face 3 : neck 0, DESIGN.md section 3) times 0
where the target is undefined (NaN, outside the face) or outside the network's range. Positions
are crop pixels divided by `LOSS_SCALE_PX` (256) so the loss is O(1): a loss of 1e-4 is an RMS
weighted error of 2.56 px. The sum runs over the whole batch, so samples with more valid texels
count more (as in the paper's batch loss).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..net.prnet import normalized_to_pixels

LOSS_SCALE_PX = 256.0
"""Positions are divided by this (the crop side) inside the loss."""


def weighted_position_loss(
    pred_px: torch.Tensor, target_px: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """Paper eq. 1. pred_px, target_px: (N, 3, R, R) crop pixels (any float dtype; computed in
    float32); weights: (N, R, R), 0 where the target is invalid (the target there may hold any
    finite value). Returns a scalar float32."""
    diff = (pred_px.float() - target_px.float()) / LOSS_SCALE_PX
    squared = (diff * diff).sum(dim=1)
    return (squared * weights).sum() / weights.sum().clamp_min(1e-6)


def weighted_gradient_loss(
    pred_px: torch.Tensor, target_px: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """Not in the paper: the weighted squared error of the maps' finite differences between
    neighbouring texels (along u and along v, summed), each pair weighted by the smaller of
    its two texel weights. Blind to a constant offset, it sees what eq. 1 barely does:
    texel-scale ripples (the transposed convolutions' checkerboard), which cost almost nothing
    in position error but show as ridges in the mesh's shading. Same units and arguments as
    `weighted_position_loss`."""
    pred = pred_px.float() / LOSS_SCALE_PX
    target = target_px.float() / LOSS_SCALE_PX
    total = pred.new_zeros(())
    for dim in (2, 3):  # v (rows), u (columns)
        n = pred.shape[dim]
        diff = (pred.diff(dim=dim) - target.diff(dim=dim)).pow(2).sum(dim=1)
        w = torch.minimum(weights.narrow(dim - 1, 0, n - 1), weights.narrow(dim - 1, 1, n - 1))
        total = total + (diff * w).sum() / w.sum().clamp_min(1e-6)
    return total


def weighted_loss_from_normalized(
    pred_normalized: torch.Tensor, target_px: torch.Tensor, weights: torch.Tensor,
    gradient_weight: float = 0.0,
) -> torch.Tensor:
    """`weighted_position_loss` (plus `gradient_weight` x `weighted_gradient_loss`) on the
    network's sigmoid output (`PRNet.forward_normalized`): the scaling to pixels happens here
    in float32, so a bf16 autocast forward does not round positions to bf16's ~1 px steps at
    300 px."""
    pred_px = normalized_to_pixels(pred_normalized.float())
    loss = weighted_position_loss(pred_px, target_px, weights)
    if gradient_weight:
        loss = loss + gradient_weight * weighted_gradient_loss(pred_px, target_px, weights)
    return loss


def sample_landmarks(
    position_px: torch.Tensor, valid: torch.Tensor, landmark_texels: torch.Tensor
) -> torch.Tensor:
    """Bilinear read of (N, 3, R, R) maps at (K, 2) texel coordinates (x = col, y = row, texel
    centres at integers), renormalised over valid texels only (eye and lip landmarks sit next
    to UV holes, DESIGN.md section 8). valid: (N, R, R) bool. Returns (N, K, 3)."""
    n, _, r, _ = position_px.shape
    grid = (landmark_texels.to(position_px.device, torch.float32) + 0.5) / r * 2 - 1
    grid = grid.reshape(1, 1, -1, 2).expand(n, 1, -1, 2)
    mask = valid.to(torch.float32).unsqueeze(1)
    values = torch.where(mask > 0, position_px.float(), 0.0)
    kw = {"mode": "bilinear", "padding_mode": "zeros", "align_corners": False}
    total = F.grid_sample(values, grid, **kw)[:, :, 0]  # (N, 3, K)
    weight = F.grid_sample(mask, grid, **kw)[:, :, 0]  # (N, 1, K)
    return (total / weight.clamp_min(1e-6)).transpose(1, 2)


@torch.no_grad()
def batch_landmark_nme(
    pred_px: torch.Tensor, target_px: torch.Tensor, weights: torch.Tensor,
    landmark_texels: torch.Tensor,
) -> float:
    """Mean 2D landmark NME (fraction, not %) of a batch against its targets: distance in crop
    pixels between predicted and target landmarks (read at the layout's 68 calibrated texels)
    divided by sqrt(w * h) of the target landmarks' box, averaged over landmarks and samples.
    For logging only (the dev NME of evaluate.py is the real measure)."""
    valid = weights > 0
    pred = sample_landmarks(pred_px, valid, landmark_texels)[..., :2]
    target = sample_landmarks(target_px, valid, landmark_texels)[..., :2]
    extent = target.amax(dim=1) - target.amin(dim=1)  # (N, 2)
    norm = torch.sqrt(extent[:, 0] * extent[:, 1]).clamp_min(1.0)
    error = torch.linalg.norm(pred - target, dim=-1).mean(dim=1) / norm
    return float(error.mean())
