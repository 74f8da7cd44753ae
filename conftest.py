"""Hypothesis profiles for the whole suite live in fuzz.profiles; ``dev`` unless told otherwise."""

from hypothesis import settings

import fuzz.profiles  # noqa: F401  (registers dev / ci / nightly / release)

settings.load_profile("dev")
