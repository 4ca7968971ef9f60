"""Frames in compressed HDF5 files, as Dectris Eiger file writers write them (bitshuffle-LZ4, LZ4, zstd)."""

from __future__ import annotations

import json
import subprocess
import sys

import h5py
import hdf5plugin
import numpy as np
import pytest
from bluesky import RunEngine
from helpers import Documents, result_of, scan_positions

from bluesky_ptycho.callbacks import PtychoCallback
from bluesky_ptycho.sim import fermat_spiral_ptycho_scan, simulated_beamline
from bluesky_ptycho.solver import ReconstructionSettings, object_error


@pytest.fixture
def RE():
    return RunEngine()


def recorded_scan(RE, directory, compression, n_points=60):
    stage, det = simulated_beamline(seed=1, hdf5_directory=directory, compression=compression)
    raw = Documents()
    RE.subscribe(raw)
    RE(fermat_spiral_ptycho_scan(det, stage, n_points=n_points))
    (path,) = directory.glob("*.h5")
    return stage, det, raw, path


@pytest.mark.parametrize(
    ("compression", "filter_id"),
    [("bitshuffle-lz4", hdf5plugin.BSHUF_ID), ("lz4", hdf5plugin.LZ4_ID), ("zstd", hdf5plugin.ZSTD_ID)],
)
def test_a_scan_in_a_compressed_file_is_reconstructed(RE, tmp_path, compression, filter_id):
    stage, det, raw, path = recorded_scan(RE, tmp_path / "frames", compression)
    with h5py.File(path, "r") as file:
        frames = file["/entry/data/data"]
        assert str(filter_id) in frames._filters, f"the file's frames are {compression}-compressed"
        stored = frames[()]
    recon = Documents()
    settings = ReconstructionSettings(iterations=30)
    callback = PtychoCallback(recon, settings=settings, preview_every=None)
    for name, doc in raw:
        callback(name, doc)
    assert callback.wait(60)
    stop = recon.named("stop")[0]
    assert stop["exit_status"] == "success", stop["reason"]
    final = recon.named("event")[-1]["data"]
    assert final["n_frames"] == 60
    assert stored.sum() > 0 and stored.dtype == np.uint32
    truth = det.sample.truth(scan_positions(raw, stage))
    assert object_error(result_of(final, settings), truth) <= 0.2


def test_a_file_whose_filter_is_missing_fails_the_record_naming_file_and_filter(RE, tmp_path):
    _, _, raw, path = recorded_scan(RE, tmp_path / "frames", "bitshuffle-lz4", n_points=20)
    h5py.h5z.unregister_filter(hdf5plugin.BSHUF_ID)
    try:
        recon = Documents()
        callback = PtychoCallback(recon, settings=ReconstructionSettings(iterations=3), preview_every=None)
        for name, doc in raw:
            callback(name, doc)
        assert callback.wait(60)
    finally:
        hdf5plugin.register("bshuf", force=True)
    stop = recon.named("stop")[0]
    assert stop["exit_status"] == "fail"
    assert f"{path}:/entry/data/data cannot be decompressed" in stop["reason"]
    assert f"({hdf5plugin.BSHUF_ID}) is not available here" in stop["reason"]
    with h5py.File(path, "r") as file:
        assert file["/entry/data/data"].shape[0] == 20, "the raw file is untouched and reads again"
        assert file["/entry/data/data"][()].sum() > 0


def test_the_frame_reader_registers_the_filters_itself(RE, tmp_path):
    """A process that only reads frames (a worker, the service) imports no simulated detector."""
    _, _, raw, path = recorded_scan(RE, tmp_path / "frames", "bitshuffle-lz4", n_points=5)
    (resource,) = raw.named("stream_resource")
    datum = raw.named("stream_datum")[-1]
    reader = """
import json, sys
import numpy as np
from bluesky_ptycho.callbacks.external import ExternalFrames
frames = ExternalFrames()
frames.add_stream_resource(json.loads(sys.argv[1]))
np.save(sys.argv[3], frames.read_stream_datum(json.loads(sys.argv[2])))
assert "bluesky_ptycho.sim" not in sys.modules
"""
    out = tmp_path / "read.npy"
    subprocess.run(
        [sys.executable, "-c", reader, json.dumps(resource), json.dumps(datum), str(out)],
        check=True,
        timeout=120,
    )
    with h5py.File(path, "r") as file:
        np.testing.assert_array_equal(np.load(out), file["/entry/data/data"][4:5])
