"""`pytest corpus/` collects only the replay harness: entry folders are data, never imported or run.

Without this hook pytest would walk into every entry folder, import a ``conftest.py`` found there and
collect any ``test_*.py``.  A foreign file in an entry is reported by the replay instead
(``verifier.corpus.load_entry``).  Name ``corpus/`` or ``corpus/test_replay.py`` on the command line, never
an entry folder: pytest imports the conftest.py of a folder given as an argument before any hook runs.
"""

from pathlib import Path

HERE = Path(__file__).resolve().parent
HARNESS = {HERE / "test_replay.py", HERE / "conftest.py"}


def pytest_ignore_collect(collection_path, config):
    """Ignore everything under ``corpus/`` but the harness files themselves."""
    path = Path(collection_path).resolve()
    if path == HERE or HERE not in path.parents:
        return None
    return path not in HARNESS
