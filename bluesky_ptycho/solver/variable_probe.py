"""A probe that changes through the scan: orthogonal probe relaxation (OPR; Odstrcil et al., Opt. Express 24, 8360, 2016).

Frame ``j`` is lit by the first probe mode plus a variation of its own,
``P_j = P_0 + sum_k w_jk U_k``: a few eigen-probes ``U_k`` (orthonormal, shared
by the scan) with real per-frame weights ``w_jk``. The variation's exit wave
``V_j O_j`` joins the forward model (:func:`.forward.exit_wave_update`) and its
object gradient ``conj(V_j) chi_j`` the object update (:func:`.updates.update_terms`);
the illumination that preconditions the object step, the LSQ-ML step lengths
and the position gradients keep the shared probe (the variation is a small
share of it).

In every :data:`FIT_EVERY`-th iteration (the others apply the variation
as it is), after each batch the probe change every frame asks for alone,
``R_j = conj(O_j) chi_j0 / |O_j|^2`` (regularised like rPIE), less its mean
over the batch (the shared probe's update takes that), is fitted by one
alternating least-squares step of the rank-K model: each frame's weights
move by the projections of ``R_j`` on the eigen-probes, then the eigen-probes
become the least-squares fit to every frame's variation with those weights
(``V_j + R_j``, the batch's frames), and are made orthonormal again (the
weights follow, so no frame's probe changes). No frame's variation
exceeds :data:`VARIATION_BOUND` of the probe; the eigen-probes hold no
share of ``P_0`` that only turns its phase or, where each frame's scale is
fitted (:mod:`.intensity`), its power (:meth:`VariableProbe.free_of`).
One pass over the frames whatever K (:func:`probe_change_sums`: each ``R_j`` is reduced to the sums
the fit needs as it is made, never held for the whole batch); the rest is
K x K algebra. LSQ-ML only
(:class:`.lsqml.LSQML`); the probe modes' blur (mixed states) stays with
the modes. A recovery from divergence restores object and probe and keeps
the variation as it is (it is fitted again from there).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .backend import array_module, to_numpy
from .data import ProbeVariation, combined
from .forward import gather_patches
from .updates import frame_inner

#: the largest variation of any frame's probe, as a share of the first probe mode's norm
VARIATION_BOUND = 0.5
#: the variation is fitted every this many iterations (the iterations between apply it as it is):
#: a beam drifts slowly, and every second iteration gave the same R and object error as every one,
#: for less time (docs/imperfect-scans.md)
FIT_EVERY = 2


@dataclass
class VariableProbe:
    """Eigen-probes and every frame's weights on them.

    Attributes
    ----------
    eigen_probes
        (K, h, w) complex, on the state's array module; orthonormal
        (``Re<U_k, U_l>``), fitted at the end of each iteration that fits the variation
        (:meth:`fit_eigen_probes`).
    weights
        (N, K) float32 host array: frame ``j``'s ``w_jk`` (0 until the
        frame is first fitted).
    at_bound
        (N,) whether frame ``j``'s variation was ever held at
        :data:`VARIATION_BOUND` (:meth:`bounded`).
    """

    eigen_probes: Any
    weights: np.ndarray
    at_bound: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    _sums: _EigenSums | None = field(default=None, repr=False)

    @classmethod
    def start(cls, xp, count: int, shape: tuple[int, int], rng: np.random.Generator) -> VariableProbe:
        """``count`` random orthonormal eigen-probes of ``shape`` (a power iteration's start), no frames yet."""
        noise = rng.normal(size=(count, *shape)) + 1j * rng.normal(size=(count, *shape))
        start = cls(xp.asarray(noise.astype(np.complex64)), np.zeros((0, count), np.float32))
        start.orthonormalise()
        return start

    def take(self, n_frames: int) -> None:
        """Weights for ``n_frames`` frames in all, those new here at 0."""
        new = np.zeros((n_frames - len(self.weights), self.weights.shape[1]), np.float32)
        self.weights = np.concatenate([self.weights, new])
        self.at_bound = np.concatenate([self.at_bound, np.zeros(len(new), bool)])

    def restart(self, frames: np.ndarray) -> None:
        """``frames`` moved far (:mod:`.position_search`): their variations, fitted where they were, start again at 0."""
        self.weights[frames] = 0

    def variation(self, frames) -> ProbeVariation | None:
        """``V_j = sum_k w_jk U_k`` of ``frames``, or None while their weights are all 0."""
        weights = self.weights[frames]
        if not weights.any():
            return None
        return ProbeVariation(array_module(self.eigen_probes).asarray(weights), self.eigen_probes)

    def recorded(self, rotation) -> dict[str, np.ndarray]:
        """What a :class:`.data.ReconstructionResult` keeps of it: host copies of ``eigen_probes`` and ``eigen_weights``.

        ``rotation``: how the result's probe modes were mixed from the state's (see :meth:`follow_first_mode`).
        """
        eigen_probes = to_numpy(self.eigen_probes) * to_numpy(rotation)[0, 0]
        return {"eigen_probes": eigen_probes.astype(np.complex64), "eigen_weights": self.weights.copy()}

    def follow_first_mode(self, rotation) -> None:
        """The probe modes were mixed into ``sum_m rotation[m, k] P_m``: the variation stays with the new first mode.

        The old first mode's variation ``V`` goes to new mode ``k`` as
        ``rotation[0, k] V``; the first mode's share is kept (the modes'
        rotation is nearly the identity but for each mode's phase, which
        the eigen-decomposition sets afresh every time).
        """
        self.eigen_probes = self.eigen_probes * self.eigen_probes.dtype.type(to_numpy(rotation)[0, 0])

    def roll(self, shift: tuple[int, int]) -> None:
        """Move the eigen-probes with the probe (:func:`.probe.recentre`)."""
        self.eigen_probes = array_module(self.eigen_probes).roll(self.eigen_probes, shift, axis=(-2, -1))

    def fit_weights(self, state, parts: list[tuple[np.ndarray, Any, Any]], alpha: float, step: float) -> None:
        """Move the batch's weights by ``step`` times the projections of the probe changes it asks for; keep the eigen-probes' sums.

        ``parts``: (frames, corners, chi) of the batch's chunks, ``chi`` the
        exit-wave changes (B, modes, h, w) of their model; ``alpha``
        regularises ``1 / |O_j|^2`` like rPIE's step; ``step``: the shared
        probe's step along its direction. Collective over the ranks (a rank
        whose batch was empty takes part with nothing).
        """
        xp, comm, kernels = state.xp, state.comm, state.backend.kernels
        frames = np.concatenate([chunk for chunk, _, _ in parts]) if parts else np.zeros(0, int)
        eigen = self.eigen_probes
        # each frame's weights move by gain times the projections of its change less the batch's mean
        gain = step * np.linalg.inv(gram(eigen))
        total, by_new = xp.zeros(state.frame_shape, eigen.dtype), xp.zeros_like(eigen)
        projections = []
        for chunk, corners, chi in parts:
            along, part_total, part_by_new = probe_change_sums(
                state.object, corners, chi, alpha, eigen, xp.asarray(self.weights[chunk]), gain, kernels
            )
            projections.append(to_numpy(along))
            total += part_total
            by_new += part_by_new
        count = np.array([len(frames)], np.float32)
        comm.sum_together(total, count)
        if count[0] == 0:
            return
        mean = total / count[0]
        old = self.weights[frames].astype(np.float64)
        # the batch's mean change is the shared probe's: it moves no frame's weights
        mean_move = to_numpy(frame_inner(eigen, mean)).astype(np.float64) @ gain
        projections = np.concatenate(projections) if projections else np.zeros_like(old)
        new = old + projections @ gain - mean_move
        # the pass weighed each R_j by the weights its frame asked for: for a frame held at the
        # bound (a runaway, rare) the eigen-probes' sums below mix those with the weights it keeps
        new = self.bounded(frames, new, state.probe[0])
        self.weights[frames] = new
        # the eigen-probes' least squares: sum_j w_j (w_j . U) = sum_j w_j (V_j + step (R_j - mean)),
        # with sum_j new_j R_j = by_new - mean_move total (the pass summed the rest)
        sums = self._sums or _EigenSums(
            np.zeros((len(eigen),) * 2), np.zeros((len(eigen),) * 2), xp.zeros_like(eigen)
        )
        sums.normal += new.T @ new
        sums.cross += new.T @ old
        by_new -= xp.asarray(mean_move.astype(np.float32))[:, None, None] * total
        sums.fitted += np.float32(step) * by_new
        sums.fitted -= xp.asarray((step * new.sum(axis=0)).astype(np.float32))[:, None, None] * mean
        self._sums = sums

    def bounded(self, frames: np.ndarray, weights: np.ndarray, first_mode) -> np.ndarray:
        """``weights`` (B, K) of ``frames``, each frame's variation held within :data:`VARIATION_BOUND` of ``first_mode``.

        The eigen-probes are orthonormal, so a frame's variation is as large
        as its weights' norm. Where few photons tell a frame's probe, its
        weights can wander off on noise (and with each frame's scale fitted
        too, into a probe that is mostly variation, the scale shrinking to
        match, and then diverge); a frame held is marked in ``at_bound``.
        """
        limit = VARIATION_BOUND * np.sqrt(float(frame_inner(first_mode, first_mode)))
        norms = np.sqrt(np.sum(weights**2, axis=1))
        over = norms > limit
        self.at_bound[frames[over]] = True
        return np.where(over[:, None], weights * (limit / np.maximum(norms, 1e-30))[:, None], weights)

    def record(self, comm) -> dict:
        """The result's ``extra["variable_probe"]`` (collective): the bound, as a share of the probe, and the frames ever held at it."""
        return {"bound": VARIATION_BOUND, "frames_at_bound": int(comm.total(self.at_bound.sum()))}

    def fit_eigen_probes(self, comm, first_mode, scaled: bool) -> None:
        """After an iteration's batches: the eigen-probes their least squares ask for, made orthonormal (collective).

        Then the eigen-probes are freed of what no frame's data can tell or
        another fit owns (:meth:`free_of`), and every frame's variation held
        within its bound (:meth:`bounded`): ``first_mode`` is the probe's
        first mode ``P_0``, ``scaled`` whether each frame's power is fitted
        by its own scale (:mod:`.intensity`).
        """
        sums, self._sums = self._sums, None
        if sums is None:
            return
        normal, cross, fitted = comm.sum(sums.normal), comm.sum(sums.cross), comm.sum(sums.fitted)
        # where the weights cannot tell the eigen-probes apart (yet), they stay as they are
        if np.linalg.cond(normal) < 1 / np.finfo(np.float32).eps:
            solve = np.linalg.inv(normal)
            self.eigen_probes = mixed(solve @ cross, self.eigen_probes) + mixed(solve, fitted)
        self.free_of(first_mode, scaled)
        self.orthonormalise()
        self.weights = self.bounded(np.arange(len(self.weights)), self.weights, first_mode)

    def free_of(self, first_mode, scaled: bool) -> None:
        """Eigen-probes without the share of ``first_mode`` (``P_0``) that only turns or (where ``scaled``) scales it.

        ``i P_0`` in a frame's variation turns its probe's phase, which its
        intensities cannot see: weights along it are held by nothing. Where each frame
        has a scale of its own, ``P_0`` itself (its power) is the scale's:
        two fits of one power chase each other and diverge. The frames'
        probes change only by what their data cannot tell or the scales take.
        """
        along = (first_mode.conj()[None] * self.eigen_probes).sum(axis=(-2, -1)) / frame_inner(
            first_mode, first_mode
        )
        share = along if scaled else 1j * along.imag
        self.eigen_probes = (
            self.eigen_probes - share.astype(self.eigen_probes.dtype)[:, None, None] * first_mode
        )

    def orthonormalise(self) -> None:
        """Eigen-probes orthonormal again, every frame's weights changed so that no frame's probe changes.

        ``U = L U'`` with ``gram(U) = L L^T`` (Cholesky), the weights times ``L``.
        """
        lower = np.linalg.cholesky(gram(self.eigen_probes))
        self.eigen_probes = mixed(np.linalg.inv(lower), self.eigen_probes)
        self.weights = (self.weights @ lower).astype(np.float32)


@dataclass
class _EigenSums:
    """An iteration's sums of the eigen-probes' normal equations: ``normal @ U = cross @ U + fitted``."""

    normal: np.ndarray
    cross: np.ndarray
    fitted: Any


def mixed(matrix: np.ndarray, images):
    """``sum_l matrix[k, l] * images[l]`` for each k: (K, h, w) of a real (K, K) host matrix and (K, h, w) images."""
    return combined(array_module(images).asarray(matrix.astype(np.float32)), images)


def gram(images) -> np.ndarray:
    """``Re<images_k, images_l>``, (K, K) float64 on the host."""
    return np.array([[float(frame_inner(a, b)) for b in images] for a in images])


def probe_change_sums(obj, corners, chi, alpha: float, eigen_probes, weights, gain: np.ndarray, kernels=None):
    """The probe change each frame asks for alone, reduced to what the fit needs (never held for every frame at once).

    ``R_j = conj(O_j) chi_j0 / ((1 - alpha)|O_j|^2 + alpha max|O_j|^2)``, with
    ``chi`` (B, modes, h, w) the frames' exit-wave changes (the first probe
    mode's is used) and ``O_j`` the object patch at frame ``j``'s corner
    (rPIE's regularisation, :func:`.updates.regularised_step`, frame by frame).
    ``kernels``: the compiled kernels, or None for the array expressions.

    Returns
    -------
    projections
        (B, K) float64 ``p_jk = Re<U_k, R_j>`` on the (K, h, w) ``eigen_probes``.
    total
        (h, w) ``sum_j R_j``.
    by_new
        (K, h, w) ``sum_j (weights[j] + p_j @ gain)_k R_j``, ``weights`` (B, K)
        float32, ``gain`` a (K, K) float64 host array: each frame's change
        weighs with its new weights (but for the batch's mean, which the
        pass cannot know yet).
    """
    if kernels is not None:
        return kernels.probe_change_sums(obj, corners, chi, alpha, eigen_probes, weights, gain)
    patches = gather_patches(obj, corners, chi.shape[-2:])
    power = patches.real**2 + patches.imag**2
    largest = power.max(axis=(-2, -1), keepdims=True)
    changes = patches.conj() * chi[:, 0] / ((1 - alpha) * power + (alpha + 1e-6) * largest + 1e-30)
    projections = frame_inner(eigen_probes[None], changes[:, None]).astype(np.float64)
    coefficients = weights + (projections @ array_module(projections).asarray(gain)).astype(np.float32)
    return projections, changes.sum(axis=0), (coefficients.T[:, :, None, None] * changes[None]).sum(axis=1)
