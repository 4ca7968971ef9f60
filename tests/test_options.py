"""Each algorithm's own options: the registry pairs them, settings carry them, the CLI exposes them."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from bluesky_ptycho.cli_options import algorithm_option_fields, make_settings
from bluesky_ptycho.solver import ReconstructionSettings, Reconstructor, simulate
from bluesky_ptycho.solver.algorithms import REGISTRY
from bluesky_ptycho.solver.dm import DMOptions
from bluesky_ptycho.solver.lsqml import LSQMLOptions
from bluesky_ptycho.solver.options import settable
from bluesky_ptycho.solver.rpie import EPIEOptions, RPIEOptions


def test_every_algorithm_has_its_own_options_with_help():
    assert {name: algorithm.options for name, algorithm in REGISTRY.items()} == {
        "rpie": RPIEOptions,
        "epie": EPIEOptions,
        "dm": DMOptions,
        "lsqml": LSQMLOptions,
    }
    for algorithm in REGISTRY.values():
        assert algorithm.options.algorithm == algorithm.name
        for spec in settable(algorithm.options).values():
            assert spec.metadata["help"]


def test_epie_is_rpie_with_alpha_pinned_to_one():
    assert EPIEOptions().alpha == 1.0 and RPIEOptions().alpha == 0.1
    assert "alpha" not in settable(EPIEOptions)
    with pytest.raises(ValueError, match="epie takes no option alpha"):
        ReconstructionSettings(algorithm="epie", options={"alpha": 0.1})


def test_settings_take_options_of_their_algorithm_only():
    assert ReconstructionSettings(algorithm="lsqml").options == LSQMLOptions()
    given = ReconstructionSettings(algorithm="dm", options=DMOptions(relaxation=0.9))
    assert given.options.relaxation == 0.9
    with pytest.raises(ValueError, match="algorithm 'rpie' takes RPIEOptions, got DMOptions"):
        ReconstructionSettings(algorithm="rpie", options=DMOptions())
    preview = ReconstructionSettings.final().for_preview()
    assert preview.algorithm == "rpie" and preview.options == RPIEOptions()


@pytest.mark.parametrize("wrong", [0.0, 1.5])
def test_position_step_outside_its_range_is_refused_by_name(wrong):
    with pytest.raises(ValueError, match=f"position_step must be within \\(0, 1\\], got {wrong}"):
        ReconstructionSettings(position_step=wrong)


def test_settings_round_trip_through_json():
    settings = ReconstructionSettings(
        algorithm="lsqml", options={"noise_model": "gaussian", "batch_size": 16}
    )
    text = json.dumps(settings.to_dict())
    again = ReconstructionSettings.from_dict(json.loads(text))
    assert again == settings and again.options.noise_model == "gaussian"
    assert ReconstructionSettings(algorithm="epie").to_dict()["options"] == {"batch_size": 64}


def test_lowering_a_step_after_divergence_leaves_the_callers_options_alone():
    settings = ReconstructionSettings(algorithm="dm")
    reconstructor = Reconstructor(simulate(n_frames=8, frame_size=16, photons=None).data.geometry, settings)
    reconstructor.engine.calm_down()
    assert reconstructor.settings.options.relaxation == 0.375 and settings.options.relaxation == 0.75


def test_the_cli_has_an_option_for_every_field_and_refuses_the_wrong_algorithms():
    assert set(algorithm_option_fields()) == {
        "batch_size",
        "alpha",
        "relaxation",
        "farfield_precision",
        "noise_model",
    }
    assert set(algorithm_option_fields()["alpha"]) == {"rpie", "lsqml"}
    common = {
        "iterations": 5,
        "modes": 1,
        "probe_defocus": None,
        "position_correction": False,
        "position_step": 1.0,
        "position_search_every": 30,
        "intensity_correction": False,
        "variable_probe_modes": 0,
        "device": "cpu",
    }
    none = dict.fromkeys(algorithm_option_fields())
    settings = make_settings(algorithm="dm", **common, **{**none, "relaxation": 0.5})
    assert settings.options == DMOptions(relaxation=0.5)
    with pytest.raises(Exception, match="--alpha is not an option of epie"):
        make_settings(algorithm="epie", **common, **{**none, "alpha": 0.5})
    with pytest.raises(Exception, match=r"position_step must be within \(0, 1\], got 1.5"):
        make_settings(algorithm="dm", **{**common, "position_step": 1.5}, **none)
    assert make_settings(algorithm="dm", **{**common, "position_step": 0.25}, **none).position_step == 0.25
    searching = make_settings(algorithm="dm", **{**common, "position_search_every": 10}, **none)
    assert searching.position_search_every == 10


def test_reconstruct_records_the_options_it_ran_with(tmp_path):
    from bluesky_ptycho.cli import main
    from bluesky_ptycho.io import read_result, write_cxi

    scan = tmp_path / "scan.cxi"
    write_cxi(scan, simulate(n_frames=30, frame_size=32, seed=2).data)
    result = CliRunner().invoke(
        main,
        [
            "reconstruct",
            str(scan),
            "-a",
            "dm",
            "--relaxation",
            "0.9",
            "--farfield-precision",
            "half",
            "-n",
            "3",
            "--intensity-correction",
        ],
    )
    assert result.exit_code == 0, result.output
    recon = read_result(tmp_path / "scan_recon.cxi")
    assert recon.settings["algorithm"] == "dm"
    assert recon.settings["options"] == {"relaxation": 0.9, "farfield_precision": "half"}
    assert recon.settings["intensity_correction"] and recon.frame_scales.shape == (30,)
