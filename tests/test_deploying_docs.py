"""The configuration files in docs/deploying.md are ones the service accepts."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bluesky_ptycho.service.buses import make_bus
from bluesky_ptycho.service.config import ConfigError, load_config

DOC = (Path(__file__).parents[1] / "docs" / "deploying.md").read_text()


def toml_blocks() -> list[str]:
    return re.findall(r"```toml\n(.*?)```", DOC, re.S)


def test_the_documented_service_configuration_is_accepted(tmp_path):
    main, nats, kafka = toml_blocks()
    path = tmp_path / "serve.toml"
    path.write_text(main)
    config = load_config(path)
    assert (
        config.bus.kind == "zmq" and config.runner.process and config.reconstruction.initial_probe == "latest"
    )
    assert config.configuration_signals["photon_energy_ev"] == "det_photon_energy"
    assert config.reconstruction.final_settings().algorithm == "lsqml"
    assert config.detector.settings().frame_size == 256 and config.detector.settings().measures_centre
    for other, kind in ((nats, "nats"), (kafka, "kafka")):
        password = tmp_path / "kafka-password"
        password.write_text("x")
        password.chmod(0o600)
        body = main.split("[catalog]")[1]
        text = other.replace("/etc/bluesky-ptycho/kafka-password", str(password)) + "[catalog]" + body
        path.write_text(text)
        assert make_bus(load_config(path).bus).description.lower().startswith(kind)


def test_a_misspelt_geometry_key_is_named(tmp_path):
    path = tmp_path / "serve.toml"
    path.write_text(toml_blocks()[0].replace("x_key =", "xkey ="))
    with pytest.raises(ConfigError, match=r"geometry: unknown key\(s\) \['xkey'\]"):
        load_config(path)


def test_a_pixel_mask_file_that_is_not_there_is_named(tmp_path):
    path = tmp_path / "serve.toml"
    path.write_text(toml_blocks()[0].replace("binning = 1", 'binning = 1\npixel_mask = "/no/such/mask.h5"'))
    with pytest.raises(
        ConfigError, match=r"detector.pixel_mask: pixel mask file /no/such/mask.h5 does not exist"
    ):
        load_config(path)


def test_the_systemd_unit_runs_the_service_and_stops_it_gently():
    unit = re.search(r"`/etc/systemd/system/bluesky-ptycho.service`:\n\n```ini\n(.*?)```", DOC, re.S).group(1)
    assert "ExecStart=/opt/bluesky/venv/bin/bluesky-ptycho serve /etc/bluesky-ptycho/serve.toml\n" in unit
    assert "KillMode=mixed" in unit  # SIGTERM to the service alone, so it can record and flush
    stop_grace = float(re.search(r"stop_grace_s = (\d+)", toml_blocks()[0]).group(1))
    assert float(re.search(r"TimeoutStopSec=(\d+)", unit).group(1)) > stop_grace
