"""Hypothesis profiles, registered once for the whole suite (`--hypothesis-profile NAME`).

* ``dev``      a few examples, fast feedback while editing.
* ``ci``       derandomized, no example database, no deadline, failure blobs printed.
* ``nightly``  many examples, example database on, ``target()`` on the invariance error.
* ``release``  fixed seed (derandomized), many examples, no database: the gate's campaign.
"""

from hypothesis import HealthCheck, settings

_slow = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example]
settings.register_profile("dev", max_examples=10, deadline=None, suppress_health_check=_slow)
settings.register_profile("ci", max_examples=25, derandomize=True, database=None, deadline=None,
                          print_blob=True, suppress_health_check=_slow)
settings.register_profile("nightly", max_examples=1000, deadline=None, print_blob=True,
                          suppress_health_check=_slow)
settings.register_profile("release", max_examples=200, derandomize=True, database=None, deadline=None,
                          print_blob=True, suppress_health_check=_slow)
settings.load_profile("dev")
