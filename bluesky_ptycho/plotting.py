"""Summary figures of a reconstruction (object, probe, convergence) as PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from .solver.data import ReconstructionResult
from .solver.probe import mode_powers


def summary_figure(result: ReconstructionResult, title: str = "") -> Figure:
    """A 2 x 2 figure: object amplitude and phase, probe modes, cost history.

    A result whose beam was fitted frame by frame (intensity correction, a
    varying probe) has a third row: the beam through the scan (each frame's
    share of the power, its weights on the eigen-probes) and the first
    eigen-probe.
    """
    varies = result.frame_scales is not None or result.eigen_weights is not None
    figure = Figure(figsize=(10, 12 if varies else 8), layout="constrained")
    axes = figure.subplots(3 if varies else 2, 2)
    extent_um = _extent_um(result.object.shape, result.pixel_size)
    panels = [
        (axes[0, 0], np.abs(result.object), "gray", "object amplitude"),
        (axes[0, 1], np.angle(result.object), "twilight", "object phase (rad)"),
    ]
    for ax, image, cmap, label in panels:
        shown = ax.imshow(image, cmap=cmap, extent=extent_um)
        ax.set_title(label)
        ax.set_xlabel("x (µm)")
        ax.set_ylabel("y (µm)")
        figure.colorbar(shown, ax=ax, shrink=0.8)
    ax = axes[1, 0]
    probe_extent = _extent_um(result.probe.shape[-2:], result.pixel_size)
    ax.imshow(_complex_to_rgb(result.probe[0]), extent=probe_extent)
    powers = ", ".join(f"{100 * p:.0f}%" for p in mode_powers(result.probe))
    ax.set_title(f"probe (hue: phase), mode powers {powers}")
    ax.set_xlabel("x (µm)")
    ax = axes[1, 1]
    if result.cost_history:
        ax.semilogy(np.arange(1, len(result.cost_history) + 1), result.cost_history)
    ax.set_xlabel("iteration")
    ax.set_ylabel("normalised amplitude cost")
    ax.set_title(f"convergence: {result.iterations} iterations, {result.n_frames} frames")
    ax.grid(True, which="both", alpha=0.3)
    if varies:
        _beam_through_the_scan(result, axes[2, 0], axes[2, 1])
    algorithm = result.settings.get("algorithm", "?")
    figure.suptitle(title or f"{algorithm} reconstruction, {result.wall_time:.1f} s")
    return figure


def _beam_through_the_scan(result: ReconstructionResult, per_frame, eigen) -> None:
    """How each frame's beam differs from the shared probe, against the frame number; the first eigen-probe.

    Both as shares of the probe's first mode: the beam's amplitude share less
    one (intensity correction), each eigen-probe's weight over that mode's
    norm (the eigen-probes are orthonormal).
    """
    frames = np.arange(result.n_frames)
    if result.frame_scales is not None:
        per_frame.plot(frames, result.frame_scales - 1, label="amplitude share - 1 (intensity correction)")
    if result.eigen_weights is not None:
        norm = float(np.linalg.norm(result.probe[0]))
        for k, weights in enumerate(result.eigen_weights.T):
            per_frame.plot(frames, weights / norm, label=f"eigen-probe {k + 1}'s weight")
    per_frame.set_xlabel("frame")
    per_frame.set_ylabel("change of the beam (share of the probe)")
    per_frame.set_title("the beam through the scan")
    per_frame.legend(fontsize="small")
    per_frame.grid(True, alpha=0.3)
    if result.eigen_probes is None:
        eigen.set_axis_off()
        return
    eigen.imshow(
        _complex_to_rgb(result.eigen_probes[0]),
        extent=_extent_um(result.eigen_probes.shape, result.pixel_size),
    )
    eigen.set_title("eigen-probe 1 (hue: phase): how the probe varies")
    eigen.set_xlabel("x (µm)")


def save_summary_png(result: ReconstructionResult, path: str | Path, title: str = "") -> Path:
    """Write :func:`summary_figure` of ``result`` to a PNG file."""
    path = Path(path)
    summary_figure(result, title).savefig(path, dpi=100)
    return path


def _extent_um(shape: tuple[int, ...], pixel_size: tuple[float, float]) -> tuple[float, float, float, float]:
    height, width = shape[-2] * pixel_size[0] * 1e6, shape[-1] * pixel_size[1] * 1e6
    return (0.0, width, height, 0.0)


def _complex_to_rgb(field: np.ndarray) -> np.ndarray:
    """Hue from the phase, value from the amplitude."""
    from matplotlib.colors import hsv_to_rgb

    amplitude = np.abs(field)
    hue = (np.angle(field) + np.pi) / (2 * np.pi)
    value = amplitude / max(float(amplitude.max()), 1e-30)
    return hsv_to_rgb(np.stack([hue, np.ones_like(hue), value], axis=-1))
