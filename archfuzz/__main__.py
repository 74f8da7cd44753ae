"""``python -m archfuzz``: the same as the ``archfuzz`` command."""

import sys

from archfuzz.cli import main

sys.exit(main())
