"""Run a stateful artifact the way a user does, in a fresh process: ``python quant/genai_probe.py DIR SPEC`` (run as
a script, so neither torch nor archfuzz is imported: only numpy and ``openvino_genai``).

``SPEC`` is JSON: ``prompt`` (token ids), ``new_tokens``, ``properties`` (for the pipeline) and ``ignore_eos``.  The
process loads ``openvino_genai.LLMPipeline(DIR, device)``, generates greedily, and prints one JSON line: GenAI's
timings (time to first token = prefill, time per output token = decode with the KV cache), the load time, the
generated ids, and its memory from ``/proc/self/status``: ``VmRSS`` after the imports and ``VmHWM`` (peak RSS) at
the end.  Not ``ru_maxrss`` of the child from the parent: Linux carries the parent's high-water mark over
``execve`` (measured here: a child whose own peak was 11 MiB reported the 612 MiB of its parent), so only the
child's own ``VmHWM`` is the artifact's.  :func:`quant.stateful.fresh_genai_run` starts it.

CPU time, split like the wall figures: a streamer reads the process's CPU time (user + system, every thread:
``time.process_time``) as each token arrives, so with ``c0`` read before ``generate`` and ``c_1 .. c_n`` at the
tokens, prefill CPU = ``c_1 - c0`` and decode CPU per token = ``(c_n - c_1) / (n - 1)``.  With
``INFERENCE_NUM_THREADS=1`` (:data:`PINNED`) the decode runs on one thread, so its CPU ms per token is what the
artifact costs whatever else the machine runs (a wall time under load also counts the time the process waited).
"""

from __future__ import annotations

import json
import resource
import sys
import time

PINNED = {"INFERENCE_NUM_THREADS": 1}  # pipeline properties of the CPU-time measurement: one inference thread


def status_mib(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def cpu_split(c0: float, marks: list[tuple[float, int]]) -> dict:
    """Prefill and decode CPU from the process CPU time ``c0`` before ``generate`` and ``marks`` = (CPU time, tokens
    delivered) per streamer call: prefill = to the first token, decode per token = the rest over the tokens after it."""
    if not marks:
        return {"cpu_prefill_ms": float("nan"), "cpu_ms_per_token": float("nan")}
    first, n = marks[0][0], sum(k for _, k in marks)
    rest = n - marks[0][1]
    return {"cpu_prefill_ms": (first - c0) * 1e3,
            "cpu_ms_per_token": (marks[-1][0] - first) * 1e3 / rest if rest > 0 else float("nan")}


def greedy(pipe, ids, new_tokens: int, *, ignore_eos: bool, apply_chat_template: bool = False) -> dict:
    """``pipe.generate`` greedily after the token ids ``ids`` (an int64 array of shape (1, seq)): the generated ids,
    GenAI's own timings (time to first token = prefill, time per output token = decode with the KV cache) and the
    process's CPU time split the same way (:func:`cpu_split`; user and system seconds of the whole call)."""
    import openvino as ov
    import openvino_genai as genai

    class CpuClock(genai.StreamerBase):  # token ids as they arrive, no detokenization
        def __init__(self):
            super().__init__()
            self.marks: list[tuple[float, int]] = []

        def write(self, token):
            self.marks.append((time.process_time(), len(token) if isinstance(token, list) else 1))
            return genai.StreamingStatus.RUNNING

        def end(self):
            pass

    cfg = genai.GenerationConfig()
    cfg.max_new_tokens = new_tokens
    cfg.do_sample = False
    cfg.apply_chat_template = apply_chat_template
    cfg.ignore_eos = ignore_eos
    clock = CpuClock()
    r0, c0 = resource.getrusage(resource.RUSAGE_SELF), time.process_time()
    res = pipe.generate(ov.Tensor(ids), cfg, clock)
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    pm = res.perf_metrics
    ttft, tpot = pm.get_ttft().mean, pm.get_tpot().mean
    return {"prompt_tokens": int(ids.shape[1]), "tokens": [int(t) for t in res.tokens[0]],
            "ttft_ms": ttft, "tpot_ms": tpot, "decode_tok_s": 1e3 / tpot if tpot > 0 else float("nan"),
            "prefill_tok_s": ids.shape[1] / (ttft / 1e3) if ttft > 0 else float("nan"),
            "generate_s": pm.get_generate_duration().mean / 1e3, **cpu_split(c0, clock.marks),
            "cpu_user_s": r1.ru_utime - r0.ru_utime, "cpu_sys_s": r1.ru_stime - r0.ru_stime}


def main(folder: str, spec: dict) -> dict:
    import numpy as np
    import openvino_genai as genai

    imports = status_mib("VmRSS")
    t0 = time.perf_counter()
    pipe = genai.LLMPipeline(folder, spec.get("device", "CPU"), **spec.get("properties", {}))
    load_s = time.perf_counter() - t0
    out = greedy(pipe, np.asarray([spec["prompt"]], np.int64), spec["new_tokens"],
                 ignore_eos=spec.get("ignore_eos", True))
    return {**out, "properties": spec.get("properties", {}), "load_s": round(load_s, 3),
            "rss_imports_mib": round(imports, 1),
            "peak_rss_mib": round(status_mib("VmHWM"), 1)}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], json.loads(sys.argv[2]))))
