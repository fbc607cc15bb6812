"""Raw interactions -> clean, typed, de-duplicated interactions with integer ids."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
