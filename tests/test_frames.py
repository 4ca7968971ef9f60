"""The solver holds measured frames in two bytes a pixel and reads them back as float32 amplitudes."""

from __future__ import annotations

import numpy as np
import pytest

from bluesky_ptycho.solver import ReconstructionSettings, Reconstructor
from bluesky_ptycho.solver.backend import make_backend, to_numpy
from bluesky_ptycho.solver.frames import PAGE_FRAMES, MeasuredAmplitudes, single_from_stored, stored
from bluesky_ptycho.solver.simulate import poisson_counts, simulate

SHAPE = (8, 6)
BACKEND = make_backend("cpu")


def counts(rng, n, photons=50.0, dtype=np.uint16):
    return rng.poisson(photons, size=(n, *SHAPE)).astype(dtype)


def expected_amplitude(frames):
    return np.sqrt(np.fft.ifftshift(frames.astype(np.float64), axes=(-2, -1)))


@pytest.mark.parametrize("device", ["cpu", "cpu-expressions", "strict"])
def test_frames_appended_in_pieces_read_back_in_any_order(device):
    """Frames added in pieces that straddle the pages come back, in any order, within float16's rounding."""
    rng = np.random.default_rng(0)
    backend = make_backend("cpu", compiled=False) if device == "cpu-expressions" else make_backend(device)
    store = MeasuredAmplitudes(backend, SHAPE)
    frames = counts(rng, PAGE_FRAMES * 2 + 17)
    for first, last in [(0, 5), (5, PAGE_FRAMES + 3), (PAGE_FRAMES + 3, len(frames))]:
        store.append(frames[first:last])
    assert len(store) == len(frames)
    assert store.nbytes == 3 * PAGE_FRAMES * np.prod(SHAPE) * 2  # two bytes a pixel, three pages
    order = rng.permutation(len(frames))[:40]
    amplitude = to_numpy(store.gather(order))
    assert amplitude.dtype == np.float32
    np.testing.assert_allclose(amplitude, expected_amplitude(frames[order]), rtol=2**-11)
    np.testing.assert_allclose(
        to_numpy(store.gather(slice(3, 9))), expected_amplitude(frames[3:9]), rtol=2**-11
    )
    with pytest.raises(IndexError, match="frame"):
        store.gather(np.array([len(frames)]))


def test_faint_and_bright_frames_keep_their_precision():
    """Normalised frames (values far below one) keep 11 bits; frames far brighter than the first rescale the store."""
    rng = np.random.default_rng(1)
    faint = rng.random((4, *SHAPE)) * 1e-10  # float16 alone would keep none of this
    store = MeasuredAmplitudes(BACKEND, SHAPE)
    store.append(faint)
    np.testing.assert_allclose(store.gather(np.arange(4)), expected_amplitude(faint), rtol=2**-11)
    first = counts(rng, 4)
    bright = rng.random((4, *SHAPE)) * 3e9  # amplitudes over float16's largest at the first frames' scale
    store = MeasuredAmplitudes(BACKEND, SHAPE)
    store.append(first)
    store.append(bright)
    everything = store.gather(np.arange(8))
    np.testing.assert_allclose(everything[:4], expected_amplitude(first), rtol=2**-11)
    np.testing.assert_allclose(everything[4:], expected_amplitude(bright), rtol=2**-11)


def test_another_frame_shape_is_refused():
    store = MeasuredAmplitudes(BACKEND, SHAPE)
    with pytest.raises(ValueError, match=r"\(8, 7\)"):
        store.append(np.zeros((2, 8, 7), np.uint16))


def test_simulated_counts_are_recorded_as_a_detector_does():
    """Poisson counts in 16 bits, 32 where a pixel holds more than 65,535: the draws of one rng.poisson."""
    expected = np.full((3, *SHAPE), 40.0)
    expected[2, 0, 0] = 1e6
    drawn = np.random.default_rng(2).poisson(expected)
    recorded = poisson_counts(expected, np.random.default_rng(2))
    assert recorded.dtype == np.uint32 and np.array_equal(recorded, drawn)
    assert poisson_counts(expected[:2], np.random.default_rng(2)).dtype == np.uint16


def test_a_reconstruction_holds_its_frames_in_two_bytes_a_pixel():
    """A reconstructor given uint16 counts keeps them as float16 amplitudes; nothing float32 the size of the scan."""
    data = simulate(n_frames=120, frame_size=32, seed=3).data
    assert data.frames.dtype == np.uint16  # validation kept the counts as recorded
    reconstructor = Reconstructor(data.geometry, ReconstructionSettings(iterations=3))
    reconstructor.add_frames(data.frames[:50], data.positions[:50]).iterate()
    reconstructor.add_frames(data.frames[50:], data.positions[50:]).iterate()
    measured = reconstructor.state.measured
    assert len(measured) == 120 and measured.nbytes == PAGE_FRAMES * 32 * 32 * 2
    np.testing.assert_allclose(measured.gather(np.arange(120)), expected_amplitude(data.frames), rtol=2**-11)


def test_the_compiled_read_is_the_array_expression_bit_for_bit():
    """float16 -> float32, scaled: zeros, subnormals, the largest value and ordinary ones, in any row order."""
    rng = np.random.default_rng(4)
    page = (rng.random((PAGE_FRAMES, *SHAPE)) * 3000).astype(np.float16)
    page[0, 0, :4] = [0.0, 6e-8, 3e-5, 65504.0]  # zero, the smallest subnormal, a subnormal, the largest
    rows = rng.permutation(PAGE_FRAMES)[:9]
    rows[0] = 0
    targets = rng.permutation(12)[:9]
    unscale = np.float32(2.0**-5)
    compiled = np.full((12, *SHAPE), np.nan, np.float32)
    BACKEND.kernels.single_from_half(page.view(np.uint16), rows, targets, unscale, compiled)
    expected = single_from_stored(page, rows, unscale)
    assert np.array_equal(compiled[targets], expected)
    assert compiled[targets[0], 0, 1] == np.float32(np.float16(6e-8)) * unscale > 0


@pytest.mark.parametrize("dtype", [np.uint16, np.uint32, np.float32, np.float64])
@pytest.mark.parametrize("shape", [SHAPE, (7, 5)])
def test_the_compiled_store_is_the_array_expression_bit_for_bit(dtype, shape):
    """counts -> float16 amplitudes in FFT order: zeros, subnormals, halfway cases and overflow as NumPy rounds them."""
    rng = np.random.default_rng(5)
    counts = rng.poisson(rng.choice([0.0, 2.0, 400.0, 3e5], size=(9, *shape))).astype(dtype)
    if dtype in (np.float32, np.float64):
        counts *= rng.random(counts.shape).astype(dtype)  # processed frames: any value
    counts.reshape(-1)[:4] = [0, 1, 4_000_000_000 if dtype != np.uint16 else 65535, 2]
    for scale in (2.0**-20, 2.0**-3, 1.0, 2.0**9):
        compiled = np.zeros((9, *shape), np.uint16)
        BACKEND.kernels.half_amplitudes(counts, np.float32(scale), compiled)
        with np.errstate(over="ignore"):  # the overflow is part of the case
            expected = stored(counts, scale, np.float16)
        assert np.array_equal(compiled, expected.view(np.uint16)), f"scale {scale}"
    assert np.isinf(compiled.view(np.float16)).any()  # the overflow was there to round
    halfway = np.float32(1 + 2**-11) ** 2  # amplitude exactly halfway between two float16s
    BACKEND.kernels.half_amplitudes(
        np.full((1, 2, 2), halfway, np.float32), np.float32(1), compiled[:1, :2, :2]
    )
    assert compiled[0, 0, 0] == np.float16(1 + 2**-11).view(np.uint16) == np.float16(1).view(np.uint16)
