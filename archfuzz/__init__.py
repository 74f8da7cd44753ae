"""The application layer, on top of ``fuzz`` <- ``verifier`` <- ``quant``: the ``archfuzz`` command line
(:mod:`archfuzz.cli`, one module per command) and the release gate (:mod:`archfuzz.gate`)."""
