"""A detector's pixel mask from a file: an HDF5 dataset (an Eiger master file's, by default) or a NumPy file."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from ..solver.detector import EIGER_PIXEL_MASK


def read_pixel_mask(spec: str | Path) -> np.ndarray:
    """The pixel mask (Dectris convention: 0 good) that ``spec`` names.

    ``spec`` is ``FILE.npy``, or ``FILE.h5[:DATASET]`` (default dataset
    :data:`~bluesky_ptycho.solver.detector.EIGER_PIXEL_MASK`, where an Eiger
    master file keeps it).

    Raises
    ------
    ValueError
        Naming the file or dataset that is missing or not an image.
    """
    text = str(spec)
    path, _, dataset = text.partition(":") if not Path(text).exists() else (text, "", "")
    path = Path(path)
    if not path.exists():
        raise ValueError(f"pixel mask file {path} does not exist")
    if path.suffix == ".npy":
        mask = np.load(path)
    else:
        dataset = dataset or EIGER_PIXEL_MASK
        try:
            with h5py.File(path, "r") as file:
                if dataset not in file:
                    raise ValueError(f"pixel mask file {path} has no dataset {dataset}")
                mask = np.asarray(file[dataset])
        except OSError as error:
            raise ValueError(f"pixel mask file {path} is not an HDF5 file: {error}") from None
    if mask.ndim != 2:
        raise ValueError(f"the pixel mask in {text} has shape {mask.shape}, not an image's")
    return mask
