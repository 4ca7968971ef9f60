"""CXI files: round trips, files from other codes, clear errors on malformed files."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from bluesky_ptycho.io import CXIFormatError, read_cxi, read_result, write_cxi, write_result
from bluesky_ptycho.solver import ReconstructionSettings, Reconstructor, simulate


@pytest.fixture
def small_data():
    data = simulate(n_frames=30, frame_size=32, photons=1e5, seed=3).data
    data.mask = np.ones(data.geometry.frame_shape, bool)
    data.mask[3, 5] = False
    data.probe = np.ones((2, 32, 32), np.complex64)
    data.probe_defocus = -1.5e-4
    return data


def test_dataset_round_trip_preserves_every_field(tmp_path, small_data):
    path = write_cxi(tmp_path / "scan.cxi", small_data)
    back = read_cxi(path)
    np.testing.assert_array_equal(back.frames, small_data.frames)
    np.testing.assert_allclose(back.positions, small_data.positions, rtol=0, atol=0)
    np.testing.assert_array_equal(back.mask, small_data.mask)
    np.testing.assert_array_equal(back.probe, small_data.probe)
    assert back.probe_defocus == small_data.probe_defocus
    g, h = back.geometry, small_data.geometry
    assert g.frame_shape == h.frame_shape
    assert g.detector_distance == h.detector_distance and g.detector_pixel_size == h.detector_pixel_size
    assert g.wavelength == pytest.approx(h.wavelength, rel=1e-12)


def test_result_round_trip(tmp_path, small_data):
    rec = Reconstructor.from_data(small_data, ReconstructionSettings(iterations=3, probe_modes=2)).iterate()
    result = rec.result()
    path = write_result(tmp_path / "result.cxi", result)
    back = read_result(path)
    np.testing.assert_array_equal(back.object, result.object)
    np.testing.assert_array_equal(back.probe, result.probe)
    np.testing.assert_array_equal(back.positions, result.positions)
    assert back.cost_history == result.cost_history
    assert back.settings == result.settings and back.iterations == 3
    assert back.pixel_size == result.pixel_size and back.object_origin == result.object_origin
    with h5py.File(path) as file:  # CXI viewers find the object and probe images
        assert file["entry_1/image_1/data"].shape == result.object.shape
        assert file["entry_1/image_2/data"].shape == result.probe.shape


def write_foreign_cxi(path, data, *, with_wavelength=False, translation_columns=3):
    """A file laid out as PyNX writes it: frames under detector_1 only, no data_1 link."""
    with h5py.File(path, "w") as f:
        f["entry_1/instrument_1/detector_1/data"] = data.frames.astype(np.uint16)
        f["entry_1/instrument_1/detector_1/distance"] = data.geometry.detector_distance
        f["entry_1/instrument_1/detector_1/x_pixel_size"] = data.geometry.detector_pixel_size
        f["entry_1/instrument_1/detector_1/y_pixel_size"] = data.geometry.detector_pixel_size
        if with_wavelength:
            f["entry_1/instrument_1/source_1/wavelength"] = data.geometry.wavelength
        else:
            f["entry_1/instrument_1/source_1/energy"] = np.array([data.geometry.energy])
        translation = np.zeros((len(data), translation_columns))
        translation[:, :2] = data.positions
        f["entry_1/sample_1/geometry_1/translation"] = translation


@pytest.mark.parametrize("kwargs", [{}, {"with_wavelength": True, "translation_columns": 2}])
def test_reads_files_laid_out_by_other_codes(tmp_path, small_data, kwargs):
    write_foreign_cxi(tmp_path / "pynx.cxi", small_data, **kwargs)
    back = read_cxi(tmp_path / "pynx.cxi")
    assert back.frames.dtype == np.uint16, "counts come back as recorded, two bytes a pixel"
    np.testing.assert_array_equal(back.frames, small_data.frames)
    np.testing.assert_allclose(back.positions, small_data.positions)
    assert back.mask is None and back.probe is None


@pytest.mark.parametrize(
    ("field", "message"),
    [
        ("entry_1/instrument_1/detector_1/distance", "detector_1/distance"),
        ("entry_1/instrument_1/detector_1/x_pixel_size", "x_pixel_size"),
        ("entry_1/instrument_1/source_1/energy", "source_1/energy"),
        ("entry_1/sample_1/geometry_1/translation", "translation"),
        ("entry_1/instrument_1/detector_1/data", "data_1/data"),
    ],
)
def test_missing_field_is_named(tmp_path, small_data, field, message):
    path = tmp_path / "broken.cxi"
    write_foreign_cxi(path, small_data)
    with h5py.File(path, "a") as f:
        del f[field]
    with pytest.raises(CXIFormatError, match=message):
        read_cxi(path)


def test_malformed_values_are_reported(tmp_path, small_data):
    path = tmp_path / "bad.cxi"
    write_foreign_cxi(path, small_data)
    with h5py.File(path, "a") as f:
        del f["entry_1/instrument_1/detector_1/distance"]
        f["entry_1/instrument_1/detector_1/distance"] = -2.0
    with pytest.raises(CXIFormatError, match=r"distance.*positive"):
        read_cxi(path)
    (tmp_path / "text.cxi").write_text("not hdf5")
    with pytest.raises(CXIFormatError, match="not an HDF5"):
        read_cxi(tmp_path / "text.cxi")
    with pytest.raises(FileNotFoundError):
        read_cxi(tmp_path / "absent.cxi")


def test_frames_and_positions_of_different_lengths_in_a_file(tmp_path, small_data):
    path = tmp_path / "short.cxi"
    write_foreign_cxi(path, small_data)
    with h5py.File(path, "a") as f:
        del f["entry_1/sample_1/geometry_1/translation"]
        f["entry_1/sample_1/geometry_1/translation"] = np.zeros((5, 3))
    with pytest.raises(CXIFormatError, match="different lengths"):
        read_cxi(path)
