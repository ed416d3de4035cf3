"""synthgen: a few labelled segmentation pairs in, a large quality-filtered synthetic dataset out.

    from synthgen import create_synthetic_dataloader, SyntheticDataGenerator
"""
__version__ = "0.1.0"

_API = {"create_synthetic_dataloader", "SyntheticDataGenerator"}


def __getattr__(name: str):
    # Lazy, so `import synthgen.config` stays light (no torch import) for tools that only read configs.
    if name in _API:
        from synthgen import api

        return getattr(api, name)
    raise AttributeError(f"module 'synthgen' has no attribute {name!r}")
