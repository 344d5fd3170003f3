"""aprbench: a plugin-based benchmark harness for camera pose regression."""

__version__ = "0.1.0"
