"""bluesky-ptycho: live ptychographic reconstruction for Bluesky beamlines."""

__version__ = "0.1.0"
