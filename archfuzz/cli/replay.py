"""``archfuzz replay``: re-run every corpus entry (:func:`verifier.corpus.replay`); corrupt entries and
temp leftovers are reported by path."""

from __future__ import annotations

from . import arguments, checks
from .corpus import age_text, corpus_dir


def register(subparsers) -> None:
    r = subparsers.add_parser("replay", help="replay the regression corpus",
                              description="Re-run every corpus entry.  Exit 0 when every entry replayed as expected; 1 "
                              "on a regression (a fixed finding failing again, a mutant not caught or one that raised "
                              "and never ran, an expected refusal now breaking, a replay that proves nothing) or when "
                              "a corrupt entry, stray file or empty folder is found (each reported by path with its "
                              "reason; the other entries still replay); 2 on bad arguments.  Temp leftovers of "
                              "interrupted writes are reported with their age and do not change the exit status.")
    r.add_argument("--root", type=arguments.any_path, default=str(checks.corpus_root()),
                   help="corpus folder (must exist)")
    r.add_argument("--no-update", action="store_true", help="do not write outcomes into meta.json")
    r.set_defaults(func=run)


def run(args) -> int:
    from verifier.corpus import find_leftovers, load_entries, replay
    root = corpus_dir(args.root, "replay")
    entries, bad = load_entries(root)
    regressions = 0
    for entry in entries:
        result = replay(entry, update=not args.no_update)
        regressions += result.regression
        why = f": {result.reason}: {result.verdict}" if result.regression else ""
        print(f"{'REGRESSION ' if result.regression else ''}{entry.name} [{entry.meta['kind']}, "
              f"{entry.meta['status']}]: {result.outcome}{why}", flush=True)
    for path, reason in bad:
        print(f"CORRUPT {path}: {reason}")
    leftovers = find_leftovers(root)
    for left in leftovers:
        print(f"LEFTOVER {left.path}: {left.what}, {age_text(left.age_s)} old (archfuzz corpus clean removes it)")
    print(f"{len(entries)} entries replayed, {regressions} regressions, {len(bad)} corrupt"
          + (" (corrupt entries fail the replay: fix or move them)" if bad else "")
          + (f", {len(leftovers)} temp leftovers" if leftovers else ""))
    return 1 if regressions or bad else 0
