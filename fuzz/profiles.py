"""Hypothesis settings profiles, registered once and chosen by name (pytest ``--hypothesis-profile``,
``archfuzz fuzz --profile``).

* ``dev``      a few examples, fast feedback while editing.
* ``ci``       derandomized, no example database, no deadline, failure blobs printed.
* ``nightly``  many examples, the example database on (a cache, not the corpus), ``target()`` on.
* ``release``  fixed seed (derandomized), many examples, no database: the gate's campaign.
"""

from hypothesis import HealthCheck, settings

PROFILES = ("dev", "ci", "nightly", "release")
_SLOW = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example]


def register_profiles() -> None:
    settings.register_profile("dev", max_examples=10, deadline=None, suppress_health_check=_SLOW)
    settings.register_profile("ci", max_examples=25, derandomize=True, database=None, deadline=None,
                              print_blob=True, suppress_health_check=_SLOW)
    settings.register_profile("nightly", max_examples=1000, deadline=None, print_blob=True,
                              suppress_health_check=_SLOW)
    settings.register_profile("release", max_examples=200, derandomize=True, database=None, deadline=None,
                              print_blob=True, suppress_health_check=_SLOW)


register_profiles()
