"""The recorded dataflow (:class:`RecordedGraph`): queries, a one-line-per-node text, node-link JSON."""

from __future__ import annotations

import json
import os
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import networkx as nx

from ..errors import BadInput
from ..layout import atomic_write_text

FORMAT = "archfuzz.recorded/1"
_ID = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class Consumer:
    """One reader of a node's output: the reading node, its op, the port, where it runs, what it reads."""

    node: str
    op: str
    port: int
    module_path: str
    params: tuple[str, ...]


class RecordedGraph:
    """The recorded dataflow of one forward pass: a ``networkx.DiGraph`` plus ``meta``.

    Same conventions as :class:`~fuzz.layout.Layout` (identifier node ids, node attr ``op``, edge attr
    ``port``) but not a materializable layout: ``opaque`` nodes stand for unrecognised torch calls.
    """

    def __init__(self, graph: nx.DiGraph, meta: dict | None = None):
        self.graph = graph
        self.meta = dict(meta or {})
        self.order = sorted(graph, key=lambda n: (graph.nodes[n].get("index", 0), n))
        self._rank = {n: i for i, n in enumerate(self.order)}

    # ------------------------------------------------------------------ queries
    def op(self, node: str) -> str:
        return self.graph.nodes[node]["op"]

    def attrs(self, node: str) -> dict:
        """Every attribute of ``node`` (a copy)."""
        return dict(self.graph.nodes[node])

    def inputs(self, node: str) -> list[str]:
        """Producers read by ``node``, in port order."""
        return [src for src, _, _ in sorted(self.graph.in_edges(node, data="port"), key=lambda e: e[2])]

    def consumers(self, node: str) -> list[str]:
        """Nodes reading the output of ``node``, in execution order."""
        return sorted(self.graph.successors(node), key=self._rank.__getitem__)

    def of_op(self, *ops: str) -> list[str]:
        """Nodes of the given op kinds, in execution order."""
        return [n for n in self.order if self.graph.nodes[n]["op"] in ops]

    def readers(self, param: str) -> list[str]:
        """Nodes reading the parameter ``param`` (a canonical name or a tied alias), in execution order."""
        name = self.meta.get("aliases", {}).get(param, param)
        return [n for n in self.order if name in self.graph.nodes[n].get("params", ())]

    @property
    def logits(self) -> str:
        """The node whose output is the logits."""
        return self.meta["logits"]

    def norm_consumers(self) -> dict[str, list[Consumer]]:
        """Every ``norm`` node -> the nodes reading its output (exact dataflow edges), in execution order."""
        out = {}
        for norm in self.of_op("norm"):
            readers = []
            for dst in self.consumers(norm):
                d = self.graph.nodes[dst]
                readers.append(Consumer(dst, d["op"], self.graph.edges[norm, dst]["port"], d["module_path"],
                                        tuple(d.get("params", ()))))
            out[norm] = readers
        return out

    # ------------------------------------------------------------------ text
    def summary(self) -> str:
        """One line per node in execution order: id, op, key attributes, module, inputs, parameters."""
        counts = defaultdict(int)
        for n in self.order:
            counts[self.op(n)] += 1
        head = (f"recorded {self.meta.get('model', 'model')}: {len(self.order)} nodes "
                f"(" + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) + f"), logits <- {self.logits}")
        lines = [head]
        width = max(len(n) for n in self.order)
        skip = {"op", "module_path", "params", "index", "shape"}
        for n in self.order:
            d = self.graph.nodes[n]
            hide = skip if d["op"] == "opaque" else skip | {"call"}
            keys = " ".join(f"{k}={v}" for k, v in sorted(d.items()) if k not in hide)
            ins = ", ".join(self.inputs(n))
            parts = [f"{n:<{width}}", f"{d['op']:<9}", keys, f"[{d['module_path']}]" if d["module_path"] else "",
                     f"<- {ins}" if ins else "", f"reads {', '.join(d['params'])}" if d.get("params") else ""]
            lines.append("  ".join(p for p in parts if p))
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"<RecordedGraph {self.meta.get('model', 'model')} nodes={len(self.order)}>"

    # ------------------------------------------------------------------ data
    def to_dict(self) -> dict:
        nodes = [{"id": n, **{k: self.graph.nodes[n][k] for k in sorted(self.graph.nodes[n])}} for n in self.order]
        edges = sorted(({"source": u, "target": v, **{k: d[k] for k in sorted(d)}}
                        for u, v, d in self.graph.edges(data=True)),
                       key=lambda e: (self._rank[e["target"]], e["port"]))
        return {"format": FORMAT, "meta": self.meta, "nodes": nodes, "edges": edges}

    def to_json(self, indent: int | None = 1) -> str:
        """Node-link JSON (format ``archfuzz.recorded/1``), nodes in execution order."""
        return json.dumps(self.to_dict(), indent=indent)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the JSON atomically."""
        return atomic_write_text(path, self.to_json())

    @classmethod
    def from_dict(cls, data: dict) -> "RecordedGraph":
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            got = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise BadInput(f"not a recorded graph: format {got!r}, expected {FORMAT!r}")
        g = nx.DiGraph()
        for i, n in enumerate(data.get("nodes") or []):
            if not isinstance(n, dict) or not isinstance(n.get("id"), str) or not _ID.match(n["id"]) or "op" not in n:
                raise BadInput(f"recorded graph node #{i} needs an identifier 'id' and an 'op'")
            g.add_node(n["id"], **{k: v for k, v in n.items() if k != "id"})
        for i, e in enumerate(data.get("edges") or []):
            if not isinstance(e, dict) or not {"source", "target", "port"} <= set(e):
                raise BadInput(f"recorded graph edge #{i} needs 'source', 'target' and 'port'")
            if e["source"] not in g or e["target"] not in g:
                raise BadInput(f"recorded graph edge #{i} {e['source']!r} -> {e['target']!r} names an unknown node")
            g.add_edge(e["source"], e["target"], **{k: v for k, v in e.items() if k not in ("source", "target")})
        meta = data.get("meta") or {}
        if meta.get("logits") not in g:
            raise BadInput(f"recorded graph meta 'logits' names no node: {meta.get('logits')!r}")
        return cls(g, meta)

    @classmethod
    def from_json(cls, text: str) -> "RecordedGraph":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise BadInput(f"recorded graph JSON is not valid JSON: {exc}") from None
        return cls.from_dict(data)

