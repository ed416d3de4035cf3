"""synthgen: a few labelled segmentation pairs in, a large quality-filtered synthetic dataset out."""
__version__ = "0.1.0"
