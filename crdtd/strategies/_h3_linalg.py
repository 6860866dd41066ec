"""Float64 linear algebra for the subspace and regression strategies (SVD, PSD solves).

Degenerate directions (zero singular values, singular Gram matrices) are resolved the same
way everywhere: the solution takes no component there, i.e. the minimum-norm answer.
"""

from __future__ import annotations

import torch


def svd(m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Thin SVD in float64: `U, S, Vh` with `m = U diag(S) Vh`, singular values descending."""
    u, s, vh = torch.linalg.svd(m.to(torch.float64), full_matrices=False)
    return u, s, vh


def eigh_psd(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigen-decomposition of the symmetric part of `a` in float64; tiny negatives clipped to 0."""
    a = a.to(torch.float64)
    vals, vecs = torch.linalg.eigh((a + a.T) / 2)
    return vals.clamp_min(0.0), vecs


def relative_tolerance(vals: torch.Tensor, size: int) -> float:
    """Cut-off below which an eigenvalue counts as zero (LAPACK-style rank tolerance)."""
    top = float(vals.abs().max()) if vals.numel() else 0.0
    return top * max(size, 1) * torch.finfo(torch.float64).eps


def psd_solve_right(rhs: torch.Tensor, gram: torch.Tensor) -> torch.Tensor:
    """Minimum-norm X with `X @ gram = rhs` for a PSD `gram` (pseudo-inverse on its null space)."""
    vals, vecs = eigh_psd(gram)
    tol = relative_tolerance(vals, gram.shape[0])
    inv = torch.where(vals > tol, 1.0 / torch.where(vals > tol, vals, 1.0), 0.0)
    return ((rhs.to(torch.float64) @ vecs) * inv) @ vecs.T


def psd_sqrt(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`(A^{1/2}, A^{+1/2})` for a PSD matrix: square root and pseudo-inverse square root."""
    vals, vecs = eigh_psd(a)
    tol = relative_tolerance(vals, a.shape[0])
    root = vals.sqrt()
    inv = torch.where(vals > tol, 1.0 / torch.where(vals > tol, root, 1.0), 0.0)
    return (vecs * root) @ vecs.T, (vecs * inv) @ vecs.T
