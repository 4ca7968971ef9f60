"""Are the defaults right on data as hard as measured data?

Run ``python benchmarks/robustness.py`` (``--quick``: four cases; ``--final``:
also compare the candidates for the default final reconstruction;
``--preview``: judge the preview defaults instead of the final ones;
``--precision``: R with the frames held in half precision, the default,
against single; ``--dm-precision``: R with DM's stored far fields in half
precision against single; ``--ranks N``: R over N MPI ranks against one process;
``--positions``: position refinement on scans with stage errors, fly-scan
motion and a drifting probe, :data:`IMPERFECTIONS`; ``--refinement``: R with
refinement on against off where the recorded positions are nearly right;
``--position-step`` the share of each least-squares shift refinement takes;
``--object porous``: a porous sample instead of the star, on the grid and
with ``--positions`` (``--defocus-given``: the true defocus given, not measured);
``--intensity``: intensity correction on against off, on the grid and under
a beam whose power drifts; ``--variable-probe K``: a probe varying through
the scan, K eigen-probes, against one probe, on the grid and under drifting
and fly-scanned beams, with the R of the model that made the frames). On a grid of
measured-like simulations (:func:`bluesky_ptycho.solver.simulate.realistic`:
zone plate with central stop, partially coherent beam, weak-phase object,
detector noise and bad pixels, position errors; defocus 0.2-3 mm of both signs,
1e4-1e7 photons per frame, two geometries) it prints, per case, the R-factor and
object error of the defaults (``bluesky-ptycho reconstruct data.cxi`` with no
options) next to the same run started from the true probe, the measured
defocus, and the share of the time the defocus measurement took.

Targets: defaults' R within 5 % of the true-probe R on every case; the
estimate at most 15 % of the reconstruction's time. With ``--positions``:
refined positions' rms error at most a quarter of the recorded ones' (or
1 pixel), R within 5 % of the true positions'; refinement on by default only
if it never makes R worse by more than 2 % where the recorded positions are
right.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, replace

import numpy as np

from bluesky_ptycho.solver import (
    ProbeDrift,
    ReconstructionSettings,
    Reconstructor,
    StageErrors,
    fourier_r_factor,
    object_error,
    position_error,
)
from bluesky_ptycho.solver.data import ELECTRON_VOLT
from bluesky_ptycho.solver.simulate import blurred_intensity, grid_places, realistic

GEOMETRIES = {
    "A": {"energy": 8.8e3 * ELECTRON_VOLT, "detector_distance": 2.0, "detector_pixel_size": 75e-6},
    "B": {"energy": 11.5e3 * ELECTRON_VOLT, "detector_distance": 1.4, "detector_pixel_size": 55e-6},
}


@dataclass
class Case:
    geometry: str
    defocus: float
    photons: float
    object_kind: str = "weak_phase"

    def label(self) -> str:
        kind = "" if self.object_kind == "weak_phase" else f" {self.object_kind}"
        return f"{self.geometry} {self.defocus * 1e3:+5.1f} mm {self.photons:7.0e}{kind}"


GRID = [
    Case(geometry, defocus, photons)
    for geometry, defoci in (("A", (0.2e-3, -0.5e-3, 1e-3, -1e-3, 2e-3, -3e-3)), ("B", (0.7e-3, -1.5e-3)))
    for defocus in defoci
    for photons in (1e4, 1e5, 1e7)
]
QUICK = [Case("A", 0.2e-3, 1e4), Case("A", -1e-3, 1e5), Case("A", -3e-3, 1e7), Case("B", 0.7e-3, 1e5)]
FINAL_CANDIDATES = {
    "rpie, 1 mode": {},
    "rpie, 3 modes": {"probe_modes": 3},
    "lsqml, 3 modes, gaussian": {
        "algorithm": "lsqml",
        "probe_modes": 3,
        "options": {"noise_model": "gaussian"},
    },
    "lsqml, 3 modes, poisson": {
        "algorithm": "lsqml",
        "probe_modes": 3,
        "options": {"noise_model": "poisson"},
    },
    "dm, 3 modes": {"algorithm": "dm", "probe_modes": 3},
}


# what real scans do (:mod:`bluesky_ptycho.solver.imperfections`), each a case of ``--positions``
IMPERFECTIONS = {
    "3 % step (as above)": {},
    "random 0.2 step": {"stage": StageErrors(random=0.2)},
    "random 0.5 step": {"stage": StageErrors(random=0.5)},
    "random 1 step": {"stage": StageErrors(random=1.0)},
    "affine 2 %, 1.5°, 1°": {"stage": StageErrors(scale=0.02, rotation=1.5, shear=1.0)},
    "drift 0.5 step": {"stage": StageErrors(drift=0.5)},
    "fly 0.5 step": {"fly_motion": 0.5},
    "probe drift": {"probe_drift": ProbeDrift(intensity=0.2, shift=2.0, defocus=20e-6)},
}
# the cases --positions judges refinement on: a weak-photon and a bright one, both geometries
POSITION_CASES = [Case("A", -1e-3, 1e5), Case("B", 0.7e-3, 1e7)]
# a correction may be on by default only if R with it is at most this times R without, where it is not needed
DEFAULT_RULE = 1.02
# beams --intensity judges intensity correction under, on POSITION_CASES (the grid's beam is steady)
BEAM_DRIFTS = {
    "power 20 %": {"probe_drift": ProbeDrift(intensity=0.2)},
    "power 20 %, shape": IMPERFECTIONS["probe drift"],
}
# beams --variable-probe judges a probe varying through the scan under: those and a fly scan's blur
CHANGING_BEAMS = {**BEAM_DRIFTS, "fly 0.5 step": IMPERFECTIONS["fly 0.5 step"]}


def simulate_case(case: Case, n_frames: int, seed: int = 11, **imperfections):
    return realistic(
        case.defocus,
        photons=case.photons,
        n_frames=n_frames,
        seed=seed,
        object_kind=case.object_kind,
        **imperfections,
        **GEOMETRIES[case.geometry],
    )


def run(sim, settings: ReconstructionSettings, probe=None) -> tuple[float, float, float, Reconstructor]:
    """R-factor, object error and seconds (set-up and iterations) of one reconstruction."""
    data = sim.data
    start = time.perf_counter()
    if probe is None:
        reconstructor = Reconstructor.from_data(data, settings)
    else:
        reconstructor = Reconstructor(data.geometry, settings, mask=data.mask, probe=probe)
        reconstructor.add_frames(data.frames, data.positions)
    reconstructor.iterate()
    seconds = time.perf_counter() - start
    result = reconstructor.result()
    return fourier_r_factor(result, data), object_error(result, sim), seconds, reconstructor


def defaults_against_true_probe(cases: list[Case], n_frames: int, settings: ReconstructionSettings) -> None:
    print(
        f"\ndefaults against the true probe ({n_frames} frames of 128x128, {settings.algorithm}, "
        f"{settings.probe_modes} modes, {settings.options}, {settings.iterations} iterations)"
    )
    header = (
        f"{'case':>20} {'defocus est.':>13} {'est. s':>7} {'share':>6} "
        f"{'R default':>10} {'R true':>8} {'ratio':>6} {'err default':>12} {'err true':>9}  ok"
    )
    print(header)
    failures = 0
    for case in cases:
        sim = simulate_case(case, n_frames)
        r_default, e_default, seconds, auto = run(sim, settings)
        r_true, e_true, _, _ = run(sim, settings, probe=sim.true_probe)
        estimate_seconds = auto.extra.get("probe_defocus_seconds", 0.0)
        ok = r_default <= 1.05 * r_true
        failures += not ok
        print(
            f"{case.label():>20} {auto.extra['probe_defocus'] * 1e3:+10.3f} mm {estimate_seconds:7.2f} "
            f"{estimate_seconds / seconds:6.1%} {r_default:10.4f} {r_true:8.4f} {r_default / r_true:6.3f} "
            f"{e_default:12.4f} {e_true:9.4f}  {'yes' if ok else 'NO'}"
        )
    print(f"{len(cases) - failures} of {len(cases)} cases within 5 % of the true-probe R")


def final_candidates(cases: list[Case], n_frames: int) -> None:
    print(f"\ncandidates for the default final reconstruction ({n_frames} frames of 128x128, 100 iterations)")
    print(f"{'case':>20} " + " ".join(f"{name:>26}" for name in FINAL_CANDIDATES))
    totals = {name: [] for name in FINAL_CANDIDATES}
    for case in cases:
        sim = simulate_case(case, n_frames)
        cells = []
        for name, options in FINAL_CANDIDATES.items():
            r, _, seconds, _ = run(sim, ReconstructionSettings(**options))
            totals[name].append((r, seconds))
            cells.append(f"R {r:.4f} in {seconds:5.1f} s")
        print(f"{case.label():>20} " + " ".join(f"{cell:>26}" for cell in cells))
    cells = [
        f"R {np.mean([r for r, _ in v]):.4f} in {np.mean([s for _, s in v]):5.1f} s" for v in totals.values()
    ]
    print(f"{'mean':>20} " + " ".join(f"{cell:>26}" for cell in cells))


def precisions(
    cases: list[Case], n_frames: int, held: str, half: ReconstructionSettings, single: ReconstructionSettings
) -> None:
    """R with ``held`` in half precision against single, case by case (``half`` and ``single``: the settings)."""
    print(
        f"\n{held} held in half against single precision ({n_frames} frames of 128x128, {half.algorithm}, "
        f"{half.probe_modes} modes, {half.iterations} iterations)"
    )
    print(
        f"{'case':>20} {'R half':>8} {'R single':>9} {'change':>8} {'err half':>9} {'err single':>11} "
        f"{'s half':>7} {'s single':>8}"
    )
    changes = []
    for case in cases:
        sim = simulate_case(case, n_frames)
        r_half, e_half, s_half, _ = run(sim, half)
        r_single, e_single, s_single, _ = run(sim, single)
        changes.append(r_half / r_single - 1)
        print(
            f"{case.label():>20} {r_half:8.4f} {r_single:9.4f} {changes[-1]:+8.3%} {e_half:9.4f} {e_single:11.4f} "
            f"{s_half:7.1f} {s_single:8.1f}"
        )
    print(f"largest change of R: {max(changes, key=abs):+.3%} (target: within 0.5 %)")


def positions_refined(
    cases: list[Case], n_frames: int, settings: ReconstructionSettings, defocus_given: bool = False
) -> None:
    """R, object and position errors with refinement off and on, against the true positions.

    ``defocus_given``: every run is given the true defocus, as a user who knows it does
    (``probe_defocus``); otherwise it is measured, from the recorded positions.
    """
    print(
        f"\nposition refinement on imperfect scans ({n_frames} frames of 128x128, {settings.algorithm}, "
        f"{settings.probe_modes} modes, {settings.iterations} iterations; errors in pixels, R and object "
        "error with the true positions / the recorded ones, refinement off / on; the defocus "
        f"{'given' if defocus_given else 'measured (mm; ?: in doubt)'})"
    )
    print(
        f"{'case':>20} {'scan':>21} {'defocus':>8} {'pos. error':>10} {'refined':>8} {'moved max':>9} "
        f"{'R true':>7} {'R off':>7} {'R on':>7} {'on/off':>7} {'on/true':>7} "
        f"{'err true':>8} {'err off':>8} {'err on':>8} {'s off':>6} {'s on':>6}"
    )
    for case in cases:
        case_settings = replace(settings, position_correction=False)
        if defocus_given:
            case_settings = replace(case_settings, probe_defocus=case.defocus)
        for name, imperfections in IMPERFECTIONS.items():
            sim = simulate_case(case, n_frames, **imperfections)
            pixel = sim.data.geometry.sample_pixel_size
            truth = replace(sim, data=replace(sim.data, positions=sim.true_positions))
            r_true, e_true, _, _ = run(truth, case_settings)
            r_off, e_off, s_off, off = run(sim, case_settings)
            r_on, e_on, s_on, on = run(sim, replace(case_settings, position_correction=True))
            result = on.result()
            doubt = "?" if off.extra.get("probe_defocus_in_doubt") else " "
            defocus = "given" if defocus_given else f"{off.extra['probe_defocus'] * 1e3:+6.2f}{doubt}"
            print(
                f"{case.label():>20} {name:>21} {defocus:>8} "
                f"{position_error(sim.data.positions, sim.true_positions, pixel):10.2f} "
                f"{position_error(result.positions, sim.true_positions, pixel):8.2f} "
                f"{result.extra['position_refinement']['moved_max_px']:9.2f} "
                f"{r_true:7.4f} {r_off:7.4f} {r_on:7.4f} {r_on / r_off:7.3f} {r_on / r_true:7.3f} "
                f"{e_true:8.4f} {e_off:8.4f} {e_on:8.4f} {s_off:6.1f} {s_on:6.1f}",
                flush=True,
            )


def default_verdict(ratios: list[float]) -> str:
    """Whether a correction may be on by default, from its R on/off on scans it does not need (the issue's rule)."""
    worst = max(ratios)
    return (
        f"R on/off: worst {worst:.3f}, median {np.median(ratios):.3f}; on by default: "
        f"{'yes' if worst <= DEFAULT_RULE else 'no'} (rule: no case worse than {DEFAULT_RULE})"
    )


def refinement_on_accurate_scans(cases: list[Case], n_frames: int, settings: ReconstructionSettings) -> None:
    """R with refinement off and on, on the grid's scans, whose recorded positions are nearly right."""
    settings, refined = (replace(settings, position_correction=on) for on in (False, True))
    print(
        f"\nposition refinement where the recorded positions are nearly right ({n_frames} frames of 128x128, "
        f"{settings.algorithm}, {settings.probe_modes} modes, {settings.iterations} iterations; errors in pixels)"
    )
    print(
        f"{'case':>20} {'pos. error':>10} {'refined':>8} {'R off':>7} {'R on':>7} {'on/off':>7} "
        f"{'err off':>8} {'err on':>8} {'s off':>6} {'s on':>6}"
    )
    ratios = []
    for case in cases:
        sim = simulate_case(case, n_frames)
        pixel = sim.data.geometry.sample_pixel_size
        r_off, e_off, s_off, _ = run(sim, settings)
        r_on, e_on, s_on, on = run(sim, refined)
        ratios.append(r_on / r_off)
        print(
            f"{case.label():>20} {position_error(sim.data.positions, sim.true_positions, pixel):10.2f} "
            f"{position_error(on.result().positions, sim.true_positions, pixel):8.2f} "
            f"{r_off:7.4f} {r_on:7.4f} {ratios[-1]:7.3f} {e_off:8.4f} {e_on:8.4f} {s_off:6.1f} {s_on:6.1f}",
            flush=True,
        )
    print(default_verdict(ratios))


def truth_r_factor(sim) -> float:
    """R-factor of the model that made the frames: true object, probes and positions (a fly scan's path); noise and detector aside."""
    path = sim.true_positions[None] if sim.fly_path is None else sim.fly_path
    corners, offsets = grid_places(path, sim.object_origin, sim.data.geometry.sample_pixel_size)
    probes = sim.true_probe[None] if sim.true_probes is None else sim.true_probes
    model = np.sqrt(blurred_intensity(sim.true_object, corners, probes, offsets))
    measured = np.sqrt(sim.data.frames.astype(np.float32))
    good = 1.0 if sim.data.mask is None else sim.data.mask
    return float(np.sum(np.abs(model - measured) * good) / np.sum(measured * good))


def correction_against_none(
    title: str, cases: list[Case], n_frames: int, settings, corrected, beams: dict[str, dict]
) -> None:
    """R and object error of ``settings`` and ``corrected`` on ``cases`` (a steady beam) and under ``beams`` (on POSITION_CASES).

    Under a changing beam also the R of the model that made the frames (:func:`truth_r_factor`).
    """
    print(
        f"\n{title} ({n_frames} frames of 128x128, {settings.algorithm}, {settings.probe_modes} modes, "
        f"{settings.iterations} iterations)"
    )
    print(
        f"{'case':>20} {'beam':>18} {'R off':>7} {'R on':>7} {'on/off':>7} {'R truth':>7} "
        f"{'err off':>8} {'err on':>8} {'s off':>6} {'s on':>6}"
    )
    steady = []
    runs = [(case, "steady", {}) for case in cases]
    runs += [(case, name, beam) for case in POSITION_CASES for name, beam in beams.items()]
    for case, name, beam in runs:
        sim = simulate_case(case, n_frames, **beam)
        r_off, e_off, s_off, _ = run(sim, settings)
        r_on, e_on, s_on, _ = run(sim, corrected)
        if not beam:
            steady.append(r_on / r_off)
        truth = f"{truth_r_factor(sim):7.4f}" if beam else f"{'':>7}"
        print(
            f"{case.label():>20} {name:>18} {r_off:7.4f} {r_on:7.4f} {r_on / r_off:7.3f} {truth} "
            f"{e_off:8.4f} {e_on:8.4f} {s_off:6.1f} {s_on:6.1f}",
            flush=True,
        )
    print(f"steady beam, {default_verdict(steady)}")


def intensity_corrected(cases: list[Case], n_frames: int, settings: ReconstructionSettings) -> None:
    """R and object error with intensity correction off and on: on ``cases`` (a steady beam) and under drifting beams."""
    title = f"intensity correction, fitted from iteration {settings.intensity_correction_start}"
    correction_against_none(
        title, cases, n_frames, settings, replace(settings, intensity_correction=True), BEAM_DRIFTS
    )


def probe_varied(
    cases: list[Case], n_frames: int, settings: ReconstructionSettings, eigen_probes: int
) -> None:
    """R and object error with a probe varying through the scan (OPR) against one probe: steady, drifting and fly-scanned beams."""
    varied = replace(settings, variable_probe_modes=eigen_probes)
    title = (
        f"variable probe, {eigen_probes} eigen-probes fitted from iteration {settings.variable_probe_start}"
        + (", both with intensity correction" if settings.intensity_correction else "")
    )
    correction_against_none(title, cases, n_frames, settings, varied, CHANGING_BEAMS)


def ranks_against_one_process(
    cases: list[Case], n_frames: int, settings: ReconstructionSettings, ranks: int
) -> None:
    """R of the same reconstruction over ``ranks`` MPI ranks (stripes) against one process, case by case."""
    import tempfile
    from pathlib import Path

    from bluesky_ptycho.federation.mpi import reconstruct_with_mpiexec
    from bluesky_ptycho.io import write_cxi

    print(
        f"\n{ranks} MPI ranks against one process ({n_frames} frames of 128x128, {settings.algorithm}, "
        f"{settings.probe_modes} modes, {settings.iterations} iterations)"
    )
    print(f"{'case':>20} {'R ranks':>8} {'R one':>8} {'change':>8} {'err ranks':>10} {'err one':>8}")
    changes = []
    for case in cases:
        sim = simulate_case(case, n_frames)
        r_one, e_one, _, _ = run(sim, replace(settings, fft_workers=1))
        with tempfile.TemporaryDirectory() as directory:
            path = write_cxi(Path(directory) / "scan.cxi", sim.data)
            result = reconstruct_with_mpiexec(
                path,
                path.with_name("result.cxi"),
                replace(settings, fft_workers=1),
                ranks,
                echo=lambda line: None,
            )
        r_ranks, e_ranks = fourier_r_factor(result, sim.data), object_error(result, sim)
        changes.append(r_ranks / r_one - 1)
        print(
            f"{case.label():>20} {r_ranks:8.4f} {r_one:8.4f} {changes[-1]:+8.2%} {e_ranks:10.4f} {e_one:8.4f}"
        )
    print(f"largest change of R: {max(changes, key=abs):+.2%} (target: within 2 %)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="four cases instead of the whole grid")
    parser.add_argument(
        "--final", action="store_true", help="also compare the final-reconstruction candidates"
    )
    parser.add_argument("--frames", type=int, default=300, help="frames per simulated scan")
    parser.add_argument(
        "--preview",
        action="store_true",
        help="judge the preview defaults (rPIE, one mode) instead of the final",
    )
    parser.add_argument(
        "--precision",
        action="store_true",
        help="compare frames held as float16 amplitudes (the default) with float32, instead",
    )
    parser.add_argument(
        "--dm-precision",
        action="store_true",
        help="compare DM (the final's modes and iterations) with its far fields in float16 against complex64, instead",
    )
    parser.add_argument(
        "--ranks",
        type=int,
        default=None,
        help="compare a reconstruction over this many MPI ranks with one process",
    )
    parser.add_argument(
        "--refinement",
        action="store_true",
        help="R with position refinement on against off on the grid's nearly right positions, instead",
    )
    parser.add_argument(
        "--position-step",
        type=float,
        default=None,
        help="refinement's position_step (default: the settings')",
    )
    parser.add_argument(
        "--positions",
        action="store_true",
        help="judge position refinement on imperfect scans (stage errors, fly scans, a drifting probe), instead",
    )
    parser.add_argument(
        "--defocus-given",
        action="store_true",
        help="with --positions: give every reconstruction the true defocus instead of measuring it",
    )
    parser.add_argument(
        "--object",
        choices=("weak_phase", "porous"),
        default="weak_phase",
        help="the simulated sample: a weak-phase Siemens star (default) or a porous sample as thin, "
        "whose texture shows a position error in every frame",
    )
    parser.add_argument(
        "--variable-probe",
        type=int,
        default=0,
        metavar="K",
        help="R with a probe varying through the scan (K eigen-probes) against one probe, instead",
    )
    parser.add_argument(
        "--intensity",
        action="store_true",
        help="R with intensity correction on against off, on the grid and under drifting beams, instead "
        "(with --variable-probe: both with intensity correction)",
    )
    args = parser.parse_args()
    if args.object != "weak_phase" and (args.intensity or args.variable_probe):
        parser.error("--object applies to the grid and --positions, not to --intensity or --variable-probe")
    cases = [replace(case, object_kind=args.object) for case in (QUICK if args.quick else GRID)]
    position_cases = [replace(case, object_kind=args.object) for case in POSITION_CASES]
    final = ReconstructionSettings.final()
    settings = final.for_preview() if args.preview else final
    if args.position_step is not None:
        settings = replace(settings, position_step=args.position_step)
    if args.precision:
        frames = [replace(settings, frame_precision=p) for p in ("half", "single")]
        precisions(cases, args.frames, "frames", *frames)
        return
    if args.dm_precision:
        dm = [
            replace(settings, algorithm="dm", options={"farfield_precision": p}) for p in ("half", "single")
        ]
        precisions(cases, args.frames, "dm's far fields", *dm)
        return
    if args.ranks:
        ranks_against_one_process(cases, args.frames, settings, args.ranks)
        return
    if args.refinement:
        refinement_on_accurate_scans(cases, args.frames, settings)
        return
    if args.variable_probe:
        probe_varied(
            cases, args.frames, replace(settings, intensity_correction=args.intensity), args.variable_probe
        )
        return
    if args.intensity:
        intensity_corrected(cases, args.frames, settings)
        return
    if args.positions:
        positions_refined(
            position_cases[:1] if args.quick else position_cases, args.frames, settings, args.defocus_given
        )
        return
    defaults_against_true_probe(cases, args.frames, settings)
    if args.final:
        final_candidates(QUICK, 516)


if __name__ == "__main__":
    main()
