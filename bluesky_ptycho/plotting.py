"""Summary figures of a reconstruction (object, probe, convergence) as PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from .solver.data import ReconstructionResult
from .solver.probe import mode_powers


def summary_figure(result: ReconstructionResult, title: str = "") -> Figure:
    """A 2 x 2 figure: object amplitude and phase, probe modes, cost history."""
    figure = Figure(figsize=(10, 8), layout="constrained")
    axes = figure.subplots(2, 2)
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
    algorithm = result.settings.get("algorithm", "?")
    figure.suptitle(title or f"{algorithm} reconstruction, {result.wall_time:.1f} s")
    return figure


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
