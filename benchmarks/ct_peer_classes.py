"""The compressed-tensors peers (``quant.ct_peers``) over transformers compatibility classes, float64 everywhere.

    python -m benchmarks.ct_peer_classes [--out docs/data/ct_peers_classes.json] [--classes A,B] [--peers a,b]
    python -m benchmarks.ct_peer_classes --render docs/findings.md   # tables from the committed JSON only

Each class is a tiny float64 instance (``benchmarks.compat.tiny_config`` + ``import_check_families.instantiate``,
random weights, seed 0); ``@np2`` variants shrink to non-power-of-two widths (hidden 48, head_dim 12,
intermediate 96).  Every peer runs on a fresh copy under :class:`quant.peers.ExactFloat64` (transformers' float32
policy off), so a verdict sees compressed-tensors' own arithmetic (tolerance: the float64 default).  SpinQuant
peers run twice: as llm-compressor runs them, and with ``center=False`` (the embedding centring skipped), which
separates the centring from the rotations.  ``--render`` rewrites the block between the ``ct-peers-classes``
markers of a markdown file from the JSON (and the layout campaign JSON, ``--campaign``) and changes nothing else.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")

import torch

CLASSES = ("LlamaForCausalLM", "LlamaForCausalLM@tied", "LlamaForCausalLM@np2", "Qwen2ForCausalLM",
           "Qwen3ForCausalLM", "GemmaForCausalLM", "Gemma2ForCausalLM", "Gemma3ForCausalLM", "Phi3ForCausalLM",
           "MistralForCausalLM", "Olmo2ForCausalLM", "Cohere2MoeForCausalLM", "Qwen3MoeForCausalLM",
           "MixtralForCausalLM", "Qwen2ForCausalLM@np2")
NP2 = dict(hidden_size=48, head_dim=12, intermediate_size=96)
DEFAULT_OUT = Path("docs/data/ct_peers_classes.json")
BEGIN, END = "<!-- ct-peers-classes:begin -->", "<!-- ct-peers-classes:end -->"


def instance(spec: str) -> torch.nn.Module:
    """A tiny float64 instance of ``Class[@variant]`` (variants: ``tied`` embeddings, ``np2`` widths)."""
    import transformers as tf

    from benchmarks.compat import tiny_config
    from benchmarks.import_check_families import instantiate

    name, _, variant = spec.partition("@")
    cls = getattr(tf, name)
    cfg = tiny_config(cls)
    if variant == "np2":
        for k, v in NP2.items():
            setattr(cfg, k, v)
    if variant == "tied":
        cfg.tie_word_embeddings = True
    model = instantiate(cls, cfg, seed=0)
    if variant == "tied" or getattr(cfg, "tie_word_embeddings", False):
        model.tie_weights()
    return model


def features(model: torch.nn.Module) -> list[str]:
    """What the class has that the SpinQuant mappings care about."""
    out = []
    cfg = model.config
    emb, head = model.get_input_embeddings(), model.get_output_embeddings()
    if head is not None and head.weight is emb.weight:
        out.append("tied-embeddings")
    names = [n for n, _ in model.named_modules()]
    if any(n.endswith("qkv_proj") for n in names):
        out.append("fused-qkv")
    if any(n.endswith(("q_norm", "k_norm")) for n in names):
        out.append("qk-norm")
    if any(n.endswith(("post_feedforward_layernorm", "post_attention_layernorm")) for n in names) and \
            not any(n.endswith("pre_feedforward_layernorm") for n in names) and \
            "Olmo2" in type(model).__name__:
        out.append("post-norms")
    if any(n.endswith("pre_feedforward_layernorm") for n in names):
        out.append("sandwich-norms")
    if any(getattr(m, "bias", None) is not None for n, m in model.named_modules() if n.endswith("v_proj")):
        out.append("qkv-bias")
    if any(".experts" in n for n in names):
        out.append("moe")
    if "Gemma" in type(model).__name__:
        out.append("offset-norm(1+w)")
    for k in ("hidden_size", "head_dim", "intermediate_size"):
        w = getattr(cfg, k, None)
        if isinstance(w, int) and w & (w - 1):
            out.append(f"{k}-non-pow2")
    return out


def _key(message: str | None) -> str | None:
    if not message:
        return message
    return re.sub(r"\d+", "N", re.sub(r" \(at [^)]*\)$", "", message.removeprefix("transform raised ")))[:200]


def run(classes, peers) -> list[dict]:
    from quant import ct_peers as C
    from quant.peers import ExactFloat64
    from verifier import verify

    rows = []
    for spec in classes:
        try:
            base = instance(spec)
        except Exception as exc:  # noqa: BLE001 - a class that does not build here is a row, not a stop
            rows.append({"class": spec, "build_error": f"{type(exc).__name__}: {exc}"[:300]})
            continue
        feats = features(base)
        for name in peers:
            variants = [{}, {"center": False}] if name.startswith("ct-spinquant") else [{}]
            for opts in variants:
                t = C.get(name, **opts)
                t0 = time.perf_counter()
                v = verify(t, ExactFloat64(copy.deepcopy(base)), seed=0)
                last = {k: v_ for k, v_ in t.fn.last.items() if k != "config"}
                rows.append({"class": spec, "features": feats, "peer": name, "options": opts, "status": v.status,
                             "rel": v.max_rel_err, "message": v.message if not v.ok else "",
                             "error": _key(v.message) if v.status == "error" else None, "report": last,
                             "seconds": round(time.perf_counter() - t0, 2)})
                print(f"{spec:28s} {name:30s} {str(opts):18s} {v.status:10s} {v.max_rel_err}", flush=True)
    return rows


# ------------------------------------------------------------------------------------------------ render
def _cell(r: dict) -> str:
    if r["status"] == "invariant":
        return f"ok {r['rel']:.0e}"
    if r["status"] == "error":
        return "crash"
    if r["status"] == "refused":
        return "refused"
    return f"{r['status']} {r['rel']:.0e}" if r["rel"] is not None else r["status"]


def render_classes(data: dict) -> str:
    rows = data["rows"]
    specs = list(dict.fromkeys(r["class"] for r in rows))
    cols = list(dict.fromkeys((r["peer"], json.dumps(r["options"], sort_keys=True)) for r in rows if "peer" in r))
    head = [p + (" (no centring)" if o != "{}" else "") for p, o in cols]
    out = [f"compressed-tensors {data['versions']['compressed_tensors']}, transformers "
           f"{data['versions']['transformers']}, torch {data['versions']['torch']}; float64 everywhere "
           f"(ExactFloat64), tolerance {data['tolerance']}. `ok e` = invariant with max relative logits error e; "
           f"`diverged e` = silently broken; `crash` = raised (see below).", "",
           "| class | features | " + " | ".join(head) + " |", "|---|---|" + "---|" * len(cols)]
    for s in specs:
        rs = [r for r in rows if r["class"] == s]
        if "build_error" in rs[0]:
            out.append(f"| {s} | does not build: {rs[0]['build_error'][:80]} |" + " |" * len(cols))
            continue
        by = {(r["peer"], json.dumps(r["options"], sort_keys=True)): r for r in rs}
        out.append(f"| {s} | {', '.join(rs[0]['features']) or '-'} | "
                   + " | ".join(_cell(by[c]) if c in by else "" for c in cols) + " |")
    crashes: dict = {}
    for r in rows:
        if r.get("error"):
            crashes.setdefault(r["error"], set()).add(r["class"])
    if crashes:
        out += ["", "Crashes (numbers blanked):", ""]
        out += [f"* `{k}` -- {', '.join(sorted(v))}" for k, v in crashes.items()]
    return "\n".join(out)


def render_campaign(report: dict) -> str:
    s, peers, modes = report["summary"], report["peers"], report["modes"]
    out = [f"{len(report['cases'])} family layouts (seed {report['seed']}, widths {report['widths']}), "
           f"compressed-tensors {report['versions'].get('compressed_tensors')}, transformers "
           f"{report['versions']['transformers']}. Cells: invariant / refused / crashed / floor / diverged / "
           f"inconclusive (max rel of the diverged); `float64` = through the transformers bridge (its float32 "
           f"policy: the `hf-bridge` floor), `exact` = float64 everywhere.", "", "| peer | " + " | ".join(modes) + " |", "|---|" + "---|" * len(modes)]
    for p in peers:
        cells = []
        for m in modes:
            c, w = s["per_peer"][m][p], s["worst_rel"][m][p]
            cells.append(f"{c.get('invariant', 0)}/{c.get('refused', 0)}/{c.get('crashed', 0)}/"
                         f"{c.get('floor', 0)}/{c.get('diverged', 0)}/{c.get('inconclusive', 0)} ({w['diverged']:.0e})")
        out.append(f"| {p} | " + " | ".join(cells) + " |")
    if "exact" in modes:
        all_tags = sorted({t for p in peers for t in s["per_tag"]["exact"][p]
                           if not t.startswith(("layers:", "embeddings:untied"))})
        out += ["", "Per feature, exact mode (invariant/refused/crashed/diverged):", "",
                "| feature | " + " | ".join(peers) + " |", "|---|" + "---:|" * len(peers)]
        for t in all_tags:
            cells = []
            for p in peers:
                c = s["per_tag"]["exact"][p].get(t, {})
                cells.append("/".join(str(c.get(o, 0)) for o in ("invariant", "refused", "crashed", "diverged")))
            out.append(f"| {t} | " + " | ".join(cells) + " |")
    out += ["", "Crashes (deduplicated):", ""]
    out += [f"* {c['peer']} x{c['count']}: `{c['example'][:150]}`" for c in s["crashes"]]
    return "\n".join(out)


def render(path: Path, classes_json: Path, campaign_json: Path | None) -> None:
    data = json.loads(classes_json.read_text())
    block = ["### Compatibility classes (`python -m benchmarks.ct_peer_classes`)", "", render_classes(data)]
    if campaign_json is not None and campaign_json.exists():
        block += ["", "### Layout space (`python -m benchmarks.peer_campaign`, ct peers)", "",
                  render_campaign(json.loads(campaign_json.read_text()))]
    text = path.read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{path}: no {BEGIN} ... {END} block to replace")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    path.write_text(head + BEGIN + "\n" + "\n".join(block) + "\n" + END + tail)


def main(argv=None) -> None:
    from quant import ct_peers as C

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--classes", default=",".join(CLASSES))
    ap.add_argument("--peers", default=",".join(C.names()))
    ap.add_argument("--render", type=Path, default=None, help="markdown file whose ct-peers-classes block to rewrite")
    ap.add_argument("--campaign", type=Path, default=Path("docs/data/ct_peers_campaign.json"))
    args = ap.parse_args(argv)
    if args.render is not None:
        render(args.render, args.out, args.campaign)
        return
    torch.set_num_threads(1)
    import compressed_tensors
    import transformers

    from verifier.tolerance import default_tolerance
    t0 = time.perf_counter()
    rows = run(args.classes.split(","), args.peers.split(","))
    data = {"versions": {"compressed_tensors": compressed_tensors.__version__,
                         "transformers": transformers.__version__, "torch": torch.__version__},
            "tolerance": default_tolerance(torch.float64).rel, "seconds": round(time.perf_counter() - t0, 1),
            "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(data, indent=1, default=str) + "\n")


if __name__ == "__main__":
    main()
