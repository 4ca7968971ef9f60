# The simulated ptychography beamline: a sample stage (x, y in micrometres) and a detector
# that writes its frames to HDF5 files (StreamResource/StreamDatum documents), as an area
# detector would. A real beamline puts its ophyd devices here instead.
from bluesky_ptycho.sim import fermat_spiral_ptycho_scan, raster_ptycho_scan, simulated_beamline  # noqa: F401

stage, det = simulated_beamline(hdf5_directory=frames_directory)  # noqa: F821 (00-base.py)
