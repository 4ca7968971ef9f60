"""A live matplotlib view of a reconstruction: object phase and amplitude, probe, cost per iteration."""

from __future__ import annotations

import matplotlib
import numpy as np
from bluesky.callbacks.mpl_plotting import QtAwareCallback


def interactive_backend() -> bool:
    """Whether matplotlib draws on screen (Qt, Tk, notebook...), not only to files (Agg, PDF...)."""
    backend = matplotlib.get_backend().lower()
    return backend not in {"agg", "pdf", "ps", "svg", "cairo", "template"} and "backend_inline" not in backend


class LiveReconstructionView(QtAwareCallback):
    """Shows each reconstruction as its previews arrive.

    Subscribe it to the reconstruction documents, next to the catalog
    writer: ``PtychoCallback([tiled_writer, LiveReconstructionView()])``.
    With a Qt backend the drawing runs on the Qt main thread (results arrive
    on the runner's thread); with the inline backend each update is a new
    picture; under Agg it does nothing unless ``enabled=True``.

    Parameters
    ----------
    enabled
        Draw at all; default: when the backend is interactive.

    Attributes
    ----------
    figure
        The figure (None until the first reconstruction starts).
    images
        The ``AxesImage`` of ``"phase"``, ``"amplitude"`` (object) and ``"probe"``.
    cost_line
        The convergence line: cost against iteration (the run's "convergence" stream).
    """

    def __init__(self, enabled: bool | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.enabled = interactive_backend() if enabled is None else enabled
        self.figure = None
        self.images = {}
        self.cost_line = None
        self._title = ""
        self._iterations: list[int] = []
        self._costs: list[float] = []
        self._streams: dict[str, str] = {}  # descriptor uid: stream name

    def start(self, doc: dict) -> None:
        if not self.enabled:
            return
        import matplotlib.pyplot as plt

        if self.figure is None or not plt.fignum_exists(self.figure.number):
            self.figure, axes = plt.subplots(1, 4, figsize=(14, 3.5), num="bluesky-ptycho live view")
            self.images = {
                name: ax.imshow(np.zeros((2, 2)), cmap=cmap)
                for name, ax, cmap in zip(
                    ("phase", "amplitude", "probe"), axes[:3], ("twilight", "gray", "magma"), strict=True
                )
            }
            for name, ax in zip(("object phase", "object amplitude", "probe amplitude"), axes, strict=False):
                ax.set_title(name)
                ax.set_axis_off()
            (self.cost_line,) = axes[3].semilogy([], [], "-")
            axes[3].set(xlabel="iteration", ylabel="cost", title="convergence")
        self._iterations, self._costs = [], []
        self._title = f"scan {doc.get('raw_scan_id')} ({doc.get('raw_uid', '')[:8]})"
        self.figure.suptitle(f"{self._title}: reconstructing")

    def descriptor(self, doc: dict) -> None:
        self._streams[doc["uid"]] = doc["name"]

    def event(self, doc: dict) -> None:
        if not self.enabled or self.figure is None:
            return
        data = doc["data"]
        if self._streams.get(doc["descriptor"]) == "convergence":  # drawn with the next result
            self._iterations.append(int(data["iteration"]))
            self._costs.append(float(data["cost"]))
            return
        for name, values in (
            ("phase", np.asarray(data["object_phase"])),
            ("amplitude", np.asarray(data["object_amplitude"])),
            ("probe", np.asarray(data["probe_amplitude"])[0]),
        ):
            image = self.images[name]
            image.set_data(values)
            image.set_extent((0, values.shape[1], values.shape[0], 0))
            image.set_clim(*np.percentile(values, [1, 99]))
        self.cost_line.set_data(self._iterations, self._costs)
        axes = self.cost_line.axes
        axes.relim()
        axes.autoscale_view()
        label = "final" if data["final"] else "preview"
        self.figure.suptitle(f"{self._title}: {label}, {data['n_frames']} frames, cost {data['cost']:.3e}")
        self.figure.canvas.draw_idle()
        self.figure.canvas.flush_events()

    def stop(self, doc: dict) -> None:
        if not self.enabled or self.figure is None:
            return
        if doc.get("exit_status") != "success":
            self.figure.suptitle(f"{self._title}: failed ({doc.get('reason', '')})")
            self.figure.canvas.draw_idle()
