"""DM keeps every frame's far fields in single precision or, at half the memory, in half."""

from __future__ import annotations

import numpy as np
import pytest

from bluesky_ptycho.solver import ReconstructionSettings, Reconstructor, fourier_r_factor, object_error
from bluesky_ptycho.solver.backend import make_backend
from bluesky_ptycho.solver.dm import fourier_update, kernel_arguments
from bluesky_ptycho.solver.farfields import StoredFarFields, half_from_single, rows, single_from_half
from bluesky_ptycho.solver.frames import PAGE_FRAMES
from bluesky_ptycho.solver.simulate import realistic

BACKEND = make_backend("cpu")


def test_the_compiled_conversions_are_the_array_expressions_bit_for_bit():
    """complex64 -> float16 pairs and back, scaled: signs, zeros, subnormals, halfway cases and overflow."""
    rng = np.random.default_rng(7)
    values = (rng.standard_normal((5, 2, 6, 7)) + 1j * rng.standard_normal((5, 2, 6, 7))).astype(np.complex64)
    values *= rng.choice([1e-9, 1e-6, 1.0, 3e3], size=values.shape).astype(np.float32)
    flat = values.view(np.float32).reshape(-1)
    flat[:6] = [0.0, -0.0, 1 + 2**-11, -(1 + 3 * 2**-11), 7e4, -7e4]  # halfway cases round to even; overflow
    for scale in (2.0**-3, 1.0, 2.0**9):
        compiled = np.zeros((5, 2, 6, 14), np.uint16)
        BACKEND.kernels.half_rows_from_single(
            rows(values.view(np.float32)), np.float32(scale), rows(compiled)
        )
        with np.errstate(over="ignore"):  # the overflow is part of the case
            expected = half_from_single(values, scale)
        assert np.array_equal(compiled.view(np.float16), expected), f"scale {scale}"
        if scale == 1.0:  # halfway between two float16s: to the even one; the two overflows
            assert list(expected.reshape(-1)[2:4]) == [np.float16(1), -np.float16(1 + 2**-9)]
            assert np.isinf(expected).sum() == 2
    stored = half_from_single(values, 2.0**-3)
    stored.reshape(-1)[4:6] = 0  # no infinities: not a value a store reads back
    assert (stored < 0).any() and (stored > 0).any() and (abs(stored) < 2**-14).any()  # subnormals too
    unscale = np.float32(2.0**3)
    compiled = np.full(values.shape, np.nan, np.complex64)
    BACKEND.kernels.single_rows_from_half(
        rows(stored.view(np.uint16)), unscale, rows(compiled.view(np.float32))
    )
    read = np.empty_like(compiled)
    single_from_half(stored, unscale, read)
    assert np.array_equal(compiled, read)
    assert (read.view(np.float32) < 0).any() and (read.view(np.float32) > 0).any()


@pytest.mark.parametrize("beta", [1.0, 0.75])
@pytest.mark.parametrize("modes", [1, 3])
def test_the_compiled_update_of_half_far_fields_is_the_array_expression_on_them_unpacked(beta, modes):
    """The fused pass reads the float16 pairs, updates, and leaves the update in the model and, rounded, in the store."""
    rng = np.random.default_rng(3)
    shape = (6, modes, 16, 12)

    def waves():
        return (3 * (rng.standard_normal(shape) + 1j * rng.standard_normal(shape))).astype(np.complex64)

    model, scale = waves(), 2.0**4
    stored = half_from_single(waves(), scale)
    amplitude = np.abs(3 * rng.standard_normal((6, 16, 12))).astype(np.float32)
    mask = rng.random((16, 12)) > 0.1
    expected = np.empty_like(model)
    single_from_half(stored, 1 / scale, expected)
    expected_photons = np.zeros(6)
    expected_cost = fourier_update(model.copy(), expected, amplitude, mask, beta, expected_photons)
    bits, updated, photons = stored.view(np.uint16).copy(), model.copy(), np.zeros(6)
    kernel_mask, _ = kernel_arguments(mask, model, amplitude, photons)
    cost = BACKEND.kernels.difference_map_fourier_half(
        updated, bits, np.float32(1 / scale), np.float32(scale), amplitude, kernel_mask, beta, photons
    )
    assert cost == pytest.approx(expected_cost, rel=1e-5)
    assert np.abs(updated - expected).max() <= 2e-5 * np.abs(expected).max()
    assert np.array_equal(bits.view(np.float16), half_from_single(updated, scale))
    np.testing.assert_allclose(photons, expected_photons, rtol=1e-5)


@pytest.fixture(scope="module")
def measured_like():
    return realistic(-1e-3, photons=1e5, n_frames=120, frame_size=64, seed=4)


def test_dm_with_half_far_fields_reconstructs_as_in_single_precision_in_half_the_memory(measured_like):
    """Two probe modes (rotated every tenth iteration with the far fields), refinement and recentring alike."""
    data = measured_like.data
    results, stores = {}, {}
    for precision in ("single", "half"):
        settings = ReconstructionSettings(
            algorithm="dm",
            probe_modes=2,
            position_correction=True,
            position_correction_start=5,
            options={"farfield_precision": precision},
        )
        reconstructor = Reconstructor.from_data(data, settings)
        results[precision] = reconstructor.iterate(40).result()
        stores[precision] = reconstructor.engine.farfield
    assert stores["half"].nbytes * 2 == stores["single"].nbytes == 120 * 2 * 64 * 64 * 8
    single, half = results["single"], results["half"]
    assert fourier_r_factor(half, data) == pytest.approx(fourier_r_factor(single, data), rel=0.005)
    assert object_error(half, measured_like) == pytest.approx(object_error(single, measured_like), rel=0.02)
    # refinement holds many frames on a half pixel (the patches start at whole pixels), and there the
    # far fields' rounding picks the corner: 7 of 120 frames took the other one, the cost 1.04 % apart
    np.testing.assert_allclose(half.cost_history, single.cost_history, rtol=0.02)


@pytest.mark.parametrize("precision", ["single", "half"])
def test_far_fields_that_do_not_fit_are_refused_naming_what_would_help(precision):
    store = StoredFarFields(BACKEND, precision)
    with pytest.raises(MemoryError) as refused:
        store.grow(10**9, (1, 256, 256))
    message = str(refused.value)
    assert "dm keeps every frame's far fields: 1000000000 frames x 1 modes of 256x256 need" in message
    gib = 10**9 * 256 * 256 * (8 if precision == "single" else 4) / 2**30
    assert f"{gib:.1f} GiB in {precision} precision" in message
    assert ("farfield_precision='half'" in message) == (precision == "single")
    assert "--ranks" in message and not store.pages


@pytest.mark.parametrize("precision", ["single", "half"])
def test_far_fields_grow_page_by_page_copying_only_the_last_partly_filled_page(precision):
    store, shape = StoredFarFields(BACKEND, precision), (2, 4, 3)
    rng = np.random.default_rng(5)
    values = (rng.standard_normal((700, *shape)) + 1j * rng.standard_normal((700, *shape))).astype(
        np.complex64
    )

    def put(first: int, stop: int) -> None:
        for run in store.runs(first, stop):
            store.put(slice(run.start, run.stop), values[run.start : run.stop])

    store.grow(300, shape)
    put(0, 300)
    first_page = store.pages[0]
    store.grow(700, shape)  # a live scan's next frames
    put(300, 700)
    assert store.pages[0] is first_page, "full pages are never copied"
    assert [len(page) for page in store.pages] == [PAGE_FRAMES, PAGE_FRAMES, 700 - 2 * PAGE_FRAMES]
    assert len(store) == 700 and store.nbytes == 700 * store.bytes_per_frame(shape)
    assert [(run.start, run.stop) for run in store.runs(250, 600)] == [(250, 256), (256, 512), (512, 600)]
    read = np.empty_like(values)
    for run in store.runs(0, 700):
        store.read(slice(run.start, run.stop), read[run.start : run.stop])
    rounding = 0 if precision == "single" else 2**-10
    assert np.abs(read - values).max() <= rounding * np.abs(values).max(), (
        "every frame kept, the first ones too"
    )
    with pytest.raises(IndexError, match="span pages"):
        store.stored(slice(250, 260))
