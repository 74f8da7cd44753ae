"""The child-process runner of device parity: every step runs in a fresh ``spawn`` process with a timeout,
so an exception, a segfault, another crash or a hang becomes a :class:`ChildResult` with its stage
(:data:`STAGES`) and :class:`~verifier.outcomes.Symptom` instead of a dead campaign."""

from __future__ import annotations

import faulthandler
import multiprocessing as mp
import os
import signal
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

from verifier.outcomes import PARITY_STAGES, Stage, Symptom

STAGES = PARITY_STAGES
SYMPTOMS = tuple(Symptom)
TIMEOUT = 600.0


@dataclass
class ChildResult:
    """What one child reported: ``symptom`` ``ok`` with ``figures``, or where and how it failed."""

    stage: str
    symptom: str
    message: str = ""
    figures: dict = field(default_factory=dict)
    step: str | None = None  # finer than the stage, e.g. "ov.convert_model"
    seconds: float = 0.0
    exitcode: int | None = None

    @property
    def ok(self) -> bool:
        return self.symptom == Symptom.OK

    def to_dict(self) -> dict:
        return asdict(self)


_CONN = None  # the child's end of the pipe to its parent (None in the parent: enter_stage is a no-op)


def enter_stage(stage: str, step: str | None = None) -> None:
    """Tell the parent which stage (and step) this child is in, so a crash or hang is attributed to it."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; stages: {STAGES}")
    if _CONN is not None:
        _CONN.send(("stage", stage, step))


def _child_main(conn, log: str, stage: str, fn, args: tuple, kwargs: dict) -> None:
    global _CONN
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    faulthandler.enable()  # a segfault prints the Python stack into the log
    _CONN = conn
    try:
        enter_stage(stage)
        out = fn(*args, **kwargs)
        conn.send(("done", out if isinstance(out, dict) else {} if out is None else {"value": out}))
    except BaseException as exc:  # everything is a finding here, KeyboardInterrupt included
        conn.send(("error", f"{type(exc).__name__}: {exc}", traceback.format_exc()))
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        conn.close()


def _tail(path: str, limit: int = 2000) -> str:
    try:
        text = Path(path).read_text(errors="replace").strip()
    except OSError:
        return ""
    return text[-limit:]


def _stop(proc) -> None:
    proc.terminate()
    proc.join(5)
    if proc.is_alive():
        proc.kill()
        proc.join(5)


def run_in_child(fn, *args, stage: str = Stage.EXPORT, timeout: float = TIMEOUT, log: str | Path | None = None,
                 **kwargs) -> ChildResult:
    """Run ``fn(*args, **kwargs)`` in a fresh ``spawn`` process, at most ``timeout`` seconds.

    ``fn`` (picklable, e.g. a module-level function) may call :func:`enter_stage`; it starts in
    ``stage``.  Its return value (a dict) becomes ``figures``.  Symptoms: ``exception`` (message and
    traceback), ``segfault`` (killed by SIGSEGV), ``crash`` (another signal, or an exit without a result),
    ``timeout`` (killed); the message then ends with the tail of the child's stdout/stderr (``log``).
    """
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; stages: {STAGES}")
    own_log = log is None
    if own_log:
        fd, log = tempfile.mkstemp(prefix="archfuzz-child-", suffix=".log")
        os.close(fd)
    ctx = mp.get_context("spawn")
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child_main, args=(send, str(log), stage, fn, args, kwargs), daemon=True)
    result = ChildResult(stage=stage, symptom=Symptom.CRASH)
    started = time.perf_counter()
    proc.start()
    send.close()
    outcome = None
    try:
        while outcome is None:
            remaining = started + timeout - time.perf_counter()
            if remaining <= 0 or not recv.poll(remaining):
                outcome = "timeout"
                break
            try:
                msg = recv.recv()
            except EOFError:  # the child died without a word
                outcome = "died"
                break
            if msg[0] == "stage":
                result.stage, result.step = msg[1], msg[2]
            elif msg[0] == "done":
                outcome, result.symptom, result.figures = "done", Symptom.OK, msg[1]
            else:
                outcome, result.symptom = "error", Symptom.EXCEPTION
                result.message = f"{msg[1]}\n{msg[2]}"
    finally:
        result.seconds = round(time.perf_counter() - started, 3)
        if outcome in ("done", "error", "died"):
            proc.join(10)
        if proc.is_alive():
            _stop(proc)
        recv.close()
    result.exitcode = proc.exitcode
    if outcome == "timeout":
        result.symptom = Symptom.TIMEOUT
        result.message = f"no result after {timeout:g} s (killed)"
    elif outcome == "died":
        code = proc.exitcode
        if code is not None and code < 0:
            name = signal.Signals(-code).name if -code in signal.valid_signals() else str(-code)
            result.symptom = Symptom.SEGFAULT if -code == signal.SIGSEGV else Symptom.CRASH
            result.message = f"killed by {name}"
        else:
            result.message = f"exited with status {code} without a result"
    if not result.ok:
        tail = _tail(str(log))
        if tail and outcome != "error":
            result.message += f"\n--- child output (tail) ---\n{tail}"
    if own_log:
        os.unlink(log)
    return result

