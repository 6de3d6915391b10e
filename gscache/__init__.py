"""gscache: real-time 3D Gaussian Splatting for VR. The ``gscache`` command lives in :mod:`gscache.cli`."""
