"""The layout IR: a validated ``networkx.DiGraph`` of parameterised ops (nodes) and dataflow (edges).

A node carries ``op`` plus that op's parameters (see :mod:`fuzz.ops`); an edge ``u -> v`` carries
``port``, the input slot of ``v`` that reads ``u``.  A layout has exactly one ``tokens`` source and one
sink (the logits).  JSON is networkx node-link data, canonicalised (sorted nodes, edges and keys) so
that the content hash is stable across runs, Python versions and insertion order.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

import networkx as nx

from .errors import BadInput, LayoutError
from .ops import parameter_shapes, spec

FORMAT = "archfuzz.layout/1"
_ID = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class Layout:
    """A validated decoder layout.  Immutable by convention: transforms build new layouts."""

    _inputs: dict = {}  # (the class's, empty: an instance unpickled from before the cache reads the graph)

    def __init__(self, graph: nx.DiGraph, meta: dict | None = None):
        self.graph = graph
        self.meta = dict(meta or {})
        self.widths: dict[str, int | None] = {}
        self.order: list[str] = []
        self._inputs: dict[str, tuple[str, ...]] = {}  # each node's producers in port order, read once
        self._validate()

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_nodes(cls, nodes: Iterable[tuple[str, str, dict, list[str]]], meta: dict | None = None) -> "Layout":
        """Build from ``(id, op, params, inputs)`` tuples; ``inputs`` are node ids in port order."""
        g = nx.DiGraph()
        pending = []
        for node, op, params, inputs in nodes:
            if node in g:
                raise LayoutError("duplicate node id", node)
            g.add_node(node, op=op, **params)
            pending.append((node, inputs))
        for node, inputs in pending:
            for port, src in enumerate(inputs):
                if src not in g:
                    raise LayoutError(f"input {port} reads unknown node {src!r}", node)
                if g.has_edge(src, node):
                    raise LayoutError(f"reads {src!r} twice (ports must read distinct nodes)", node)
                g.add_edge(src, node, port=port)
        return cls(g, meta)

    # ------------------------------------------------------------------ validation
    def _validate(self) -> None:
        g = self.graph
        if not isinstance(g, nx.DiGraph) or g.is_multigraph():
            raise LayoutError("a layout is a networkx.DiGraph")
        if g.number_of_nodes() == 0:
            raise LayoutError("empty layout")
        for node, data in g.nodes(data=True):
            if not isinstance(node, str) or not _ID.match(node):
                raise LayoutError("node ids are identifiers ([A-Za-z_][A-Za-z0-9_]*)", str(node))
            if "op" not in data:
                raise LayoutError("has no 'op'", node)
            op = data["op"]
            params = spec(op, node).normalise(node, {k: v for k, v in data.items() if k != "op"})
            data.clear()
            data.update(op=op, **params)
        if not nx.is_directed_acyclic_graph(g):
            cycle = nx.find_cycle(g)
            raise LayoutError(f"dataflow has a cycle: {cycle}", cycle[0][0])
        sources = [n for n, d in g.nodes(data=True) if d["op"] == "tokens"]
        if len(sources) != 1:
            raise LayoutError(f"a layout has exactly one 'tokens' node, found {len(sources)}")
        for node in sorted(g):
            if node != sources[0] and not g.pred[node]:  # in-degree 0
                raise LayoutError("has no inputs (dangling node)", node)
        sinks = [n for n in g if not g.succ[n]]  # out-degree 0
        if len(sinks) != 1:
            raise LayoutError(f"a layout has exactly one output (sink), found {sorted(sinks)}; "
                              f"every other node must feed the logits")
        self.source, self.sink = sources[0], sinks[0]
        self.order = list(nx.lexicographical_topological_sort(g))
        for node in self.order:
            op = g.nodes[node]["op"]
            ports = spec(op).ports
            ins = self._read_inputs(node)
            self._inputs[node] = tuple(ins)
            least = spec(op).min_ports or len(ports)
            if ports != ("*",) and not least <= len(ins) <= len(ports):
                raise LayoutError(f"{op} takes {len(ports) if least == len(ports) else f'{least} to {len(ports)}'} "
                                  f"input(s) {ports}, has {len(ins)}", node)
            if op == "attention" and len(ins) == 4 and g.nodes[ins[3]]["op"] != "index_topk":
                raise LayoutError(f"attention's select port reads {ins[3]!r}, not an index_topk node", node)
            self.widths[node] = spec(op).infer(node, self.params(node), [self.widths[i] for i in ins])
        # the ids read are [0, vocab); the logits' vocabulary (the lm_head's) is vocab, or fewer when the table
        # has rows for ids the model reads and never predicts (Moshi's initial token): ``out_vocab``
        vocab = g.nodes[self.source]["vocab"]
        out = self.widths[self.sink]
        if not 0 < out <= vocab:
            raise LayoutError(f"output width {out} is not a vocabulary of at most the tokens vocab {vocab}",
                              self.sink)
        for node in self.of_op("lm_head", "embedding"):
            p = self.params(node)
            want = vocab if self.op(node) == "embedding" else out
            if p["vocab"] != want:
                raise LayoutError(f"vocab {p['vocab']} != {'tokens' if want == vocab else 'output'} vocab {want}",
                                  node)
            tied = p.get("tied_to")
            if tied is not None:
                if tied not in g or g.nodes[tied]["op"] != "embedding":
                    raise LayoutError(f"tied_to {tied!r} is not an embedding node", node)
                if g.nodes[tied]["dim"] != p["dim"]:
                    raise LayoutError(f"tied to {tied!r} of dim {g.nodes[tied]['dim']}, needs {p['dim']}", node)
                if g.nodes[tied]["vocab"] != p["vocab"]:
                    raise LayoutError(f"tied to {tied!r} of {g.nodes[tied]['vocab']} rows, needs {p['vocab']} "
                                      f"(a table with rows past the output vocabulary is not shared)", node)

    # ------------------------------------------------------------------ queries
    def op(self, node: str) -> str:
        return self.graph.nodes[node]["op"]

    def params(self, node: str) -> dict:
        params = dict(self.graph.nodes[node])  # a copy: callers may edit theirs
        params.pop("op", None)
        return params

    def inputs(self, node: str) -> list[str]:
        """Producers read by ``node``, in port order (read from the graph once, by the validation)."""
        ins = self._inputs.get(node)
        return list(ins) if ins is not None else self._read_inputs(node)

    def _read_inputs(self, node: str) -> list[str]:
        preds = sorted(((src, node, data.get("port")) for src, data in self.graph.pred[node].items()),
                       key=lambda e: e[2])  # graph.in_edges(node, data="port"), without its view objects
        for i, (src, _, port) in enumerate(preds):
            if port != i:
                raise LayoutError(f"input ports must be 0..n-1, found port {port} from {src!r}", node)
        return [src for src, _, _ in preds]

    def consumers(self, node: str) -> list[tuple[str, int]]:
        """Every ``(consumer, port)`` that reads the output of ``node`` (the dataflow, not names)."""
        return sorted((dst, port) for _, dst, port in self.graph.out_edges(node, data="port"))

    def of_op(self, *ops: str) -> list[str]:
        return [n for n in self.order if self.graph.nodes[n]["op"] in ops]

    def features(self) -> list[str]:
        """Feature tags recorded by the synthesizer (``meta['features']``), sorted."""
        return sorted(self.meta.get("features", []))

    def op_features(self) -> list[str]:
        """The feature tags of the layout's nodes (each op's ``OpSpec.features(params)``), sorted, once each."""
        return sorted({tag for node in self.order for tag in spec(self.op(node)).features(self.params(node))})

    def parameter_counts(self) -> dict[str, int]:
        """Trainable elements per node (from :func:`fuzz.ops.parameter_shapes`; a tied head owns none)."""
        return {node: sum(math.prod(shape) for shape in parameter_shapes(self.op(node), self.params(node)).values())
                for node in self.order}

    def parameter_bytes(self, dtype=8) -> int:
        """Bytes the parameters take in ``dtype`` (a ``torch.dtype`` or an element size in bytes)."""
        itemsize = getattr(dtype, "itemsize", dtype)
        return sum(self.parameter_counts().values()) * itemsize

    # ------------------------------------------------------------------ data
    def to_dict(self) -> dict:
        data = nx.node_link_data(self.graph, edges="edges")
        nodes = sorted(({k: data_node[k] for k in sorted(data_node)} for data_node in data["nodes"]),
                       key=lambda d: d["id"])
        edges = sorted(({"source": e["source"], "target": e["target"], "port": e["port"]}
                        for e in data["edges"]), key=lambda e: (e["target"], e["port"]))
        return {"format": FORMAT, "meta": self.meta, "nodes": nodes, "edges": edges}

    def to_json(self, indent: int | None = 1) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict) -> "Layout":
        """Rebuild from :meth:`to_dict` data; anything malformed is :class:`BadInput` naming the key."""
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            got = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise BadInput(f"not an archfuzz layout: format {got!r}, expected {FORMAT!r}")
        unknown = set(data) - {"format", "meta", "nodes", "edges"}
        if unknown:
            raise BadInput(f"layout JSON has unknown key(s) {sorted(unknown)}; "
                           f"allowed: 'format', 'meta', 'nodes', 'edges'")
        meta = data.get("meta", {})
        if not isinstance(meta, dict):
            raise BadInput(f"layout JSON 'meta' must be an object, got {type(meta).__name__}")
        features = meta.get("features", [])
        if not isinstance(features, list) or not all(isinstance(f, str) for f in features):
            raise BadInput("layout JSON 'meta.features' must be a list of strings")
        if not isinstance(meta.get("name", ""), str):
            raise BadInput("layout JSON 'meta.name' must be a string")
        for key in ("nodes", "edges"):
            if not isinstance(data.get(key), list):
                raise BadInput(f"layout JSON needs a list {key!r}")
        ids: set[str] = set()
        for i, n in enumerate(data["nodes"]):
            if not isinstance(n, dict) or "id" not in n:
                raise BadInput(f"layout JSON node #{i} has no 'id'")
            if not isinstance(n["id"], str):
                raise BadInput(f"layout JSON node #{i}: 'id' must be a string, got {n['id']!r}")
            if n["id"] in ids:
                raise BadInput(f"layout JSON node #{i}: duplicate id {n['id']!r}")
            if not isinstance(n.get("op"), str):
                raise BadInput(f"layout JSON node {n['id']!r} needs a string 'op'")
            ids.add(n["id"])
        pairs = set()
        for i, e in enumerate(data["edges"]):
            if not isinstance(e, dict) or set(e) != {"source", "target", "port"}:
                raise BadInput(f"layout JSON edge #{i} needs exactly 'source', 'target' and 'port'")
            if not all(isinstance(e[end], str) for end in ("source", "target")):
                raise BadInput(f"layout JSON edge #{i}: 'source' and 'target' must be node id strings")
            if not isinstance(e["port"], int) or isinstance(e["port"], bool) or e["port"] < 0:
                raise BadInput(f"layout JSON edge #{i}: 'port' must be an integer >= 0, got {e['port']!r}")
            for end in ("source", "target"):
                if e[end] not in ids:
                    raise LayoutError(f"edge {e['source']!r} -> {e['target']!r} names an unknown node "
                                      f"(dangling edge)", e[end])
            if (e["source"], e["target"]) in pairs:
                raise LayoutError(f"reads {e['source']!r} twice (ports must read distinct nodes)", e["target"])
            pairs.add((e["source"], e["target"]))
        payload = {"directed": True, "multigraph": False, "graph": {},
                   "nodes": data["nodes"], "edges": data["edges"]}
        graph = nx.node_link_graph(payload, directed=True, multigraph=False, edges="edges")
        return cls(graph, meta)

    @classmethod
    def from_json(cls, text: str | bytes) -> "Layout":
        """Parse layout JSON (``str``, or ``bytes`` that must be UTF-8)."""
        if isinstance(text, bytes):
            try:
                text = text.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise BadInput(f"layout JSON is not UTF-8 text: {exc.reason} at byte {exc.start}") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise BadInput(f"layout JSON is not valid JSON: {exc}") from None
        except RecursionError:
            raise BadInput("layout JSON is nested too deeply") from None
        return cls.from_dict(data)

    def hash(self) -> str:
        """Stable content hash of the graph (meta excluded): 16 hex digits of SHA-256."""
        d = self.to_dict()
        body = json.dumps({"nodes": d["nodes"], "edges": d["edges"]}, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(body.encode()).hexdigest()[:16]

    def save(self, path: str | os.PathLike) -> Path:
        """Write the JSON atomically (temp file in the same folder, then rename)."""
        return atomic_write_text(path, self.to_json())

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Layout":
        """Read a layout JSON file; unreadable, non-UTF-8 or malformed files are :class:`BadInput` naming it."""
        p = Path(path)
        try:
            text = p.read_bytes()
        except OSError as exc:
            raise BadInput(f"cannot read layout {p}: {exc.strerror}") from None
        try:
            return cls.from_json(text)
        except BadInput as exc:
            raise type(exc)(f"{p}: {exc}") from None

    def __eq__(self, other) -> bool:
        return isinstance(other, Layout) and self.to_dict()["nodes"] == other.to_dict()["nodes"] \
            and self.to_dict()["edges"] == other.to_dict()["edges"]

    def __hash__(self) -> int:
        return hash(self.hash())

    def __repr__(self) -> str:
        name = self.meta.get("name", "layout")
        return f"<Layout {name} {self.hash()} nodes={len(self.order)}>"


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` via a temp file and ``os.replace``: readers never see half a file.

    The file gets the mode ``open(path, "w")`` would give: a file that exists keeps its mode, a new one
    gets 0o666 less the umask.  The temp file is ``.<name>.<random>.tmp`` beside it (what a crash leaves
    behind; ``archfuzz corpus clean`` removes those in a corpus).
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    try:
        keep = os.stat(p).st_mode & 0o7777
    except FileNotFoundError:
        keep = None
    while True:
        tmp = p.parent / f".{p.name}.{os.urandom(4).hex()}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the kernel applies the umask
            break
        except FileExistsError:
            continue
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            if keep is not None:
                os.fchmod(fh.fileno(), keep)
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, p)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return p


def write_report(out_dir: str | os.PathLike, stem: str, report: dict, markdown: str) -> tuple[Path, Path]:
    """``<stem>.json`` (sorted keys, one-space indent, anything else as ``str``) and ``<stem>.md`` in
    ``out_dir``, each written atomically; returns both paths."""
    out = Path(out_dir)
    js = atomic_write_text(out / f"{stem}.json", json.dumps(report, indent=1, sort_keys=True, default=str))
    return js, atomic_write_text(out / f"{stem}.md", markdown)


@contextlib.contextmanager
def atomic_dir(out: str | os.PathLike) -> Iterator[Path]:
    """A temporary sibling folder ``.<name>-<random>`` to fill; renamed to ``out`` when the block completes (an
    existing ``out`` is replaced only then), removed when it raises: a reader sees the old folder or the whole new
    one, never half of it."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        yield tmp
        if out.exists():
            old = out.with_name(f".{out.name}-replaced")
            shutil.rmtree(old, ignore_errors=True)
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
