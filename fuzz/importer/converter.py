"""The converter: a recorded graph (:class:`~fuzz.record.RecordedGraph`) -> layout nodes.

:meth:`Converter.layout` applies the exact rewrites (:mod:`fuzz.importer.rewrites`), then converts each
recorded node, in recording order, through the importer pattern registered for its recorded op
(:mod:`fuzz.importer.patterns`), and checks that every source parameter is read by exactly one layout node.
"""

from __future__ import annotations

import math
from collections import defaultdict

import networkx as nx
import torch
from torch import nn

from ..errors import ArchfuzzError, BadInput, LayoutError
from ..layout import Layout
from ..record import RecordedGraph
from . import rewrites, temperature
from .patterns import pattern_for, scores_activations_for_topk, sinks_unread

Entry = tuple[str, str, dict, list[str]]  # (layout node, op, params, inputs): an argument of Layout.from_nodes


class Converter:
    """Rewrites a RecordedGraph into layout nodes; ``parameters`` maps node -> role -> source Parameter."""

    def __init__(self, model: nn.Module, rec: RecordedGraph):
        self.model, self.rec = model, rec
        self.g = rec.graph.copy()
        self.n_tokens = math.prod(rec.meta["input_shape"])
        self.named = dict(model.named_parameters())
        self.modules = dict(model.named_modules())
        self.rotaries = [(p, m) for p, m in self.modules.items()
                         if isinstance(m._buffers.get("inv_freq"), torch.Tensor)]
        self.parameters: dict[str, dict[str, nn.Parameter]] = {}
        self.param_map: dict[str, dict[str, str]] = {}
        self.tied: dict[str, dict[str, str]] = {}  # tied lm_head -> {"weight": the name it reads the table by}
        self.reshaped: dict[str, list[int]] = {}  # source parameter -> its shape, where the layout reads a view
        self.head_biases: dict[str, int] = {}  # source (heads,) bias -> heads, where a linear reads it repeated
        self.thetas: dict[tuple[str, int], dict] = {}  # (module path, rotary_dim) -> rope theta and scaling

    # ------------------------------------------------------------------ helpers for the patterns
    def refuse(self, node: str, why: str) -> BadInput:
        d = self.g.nodes[node]
        return BadInput(f"cannot import {d['module_path'] or type(self.model).__name__} ({why}; "
                        f"recorded node {node!r})")

    def inputs(self, node: str) -> list[str]:
        return [s for s, _, _ in sorted(self.g.in_edges(node, data="port"), key=lambda e: e[2])]

    def width(self, node: str) -> int:
        return math.prod(self.g.nodes[node]["shape"]) // self.n_tokens

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.named[name].shape)

    def rewire(self, node: str, inputs: list[str]) -> None:
        for src in list(self.g.predecessors(node)):
            self.g.remove_edge(src, node)
        for port, src in enumerate(inputs):
            self.g.add_edge(src, node, port=port)

    # ------------------------------------------------------------------ conversion
    def layout(self) -> Layout:
        """The validated layout of the recording (meta: name, source, param_map, aliases, tied, module_paths)."""
        self._refuse_repeated_layers()
        self._refuse_dynamic_masks()
        self._refuse_per_expert_norms()
        rewrites.drop_identity_scales(self)
        rewrites.bypass_views(self)
        rewrites.fold_differential_attention(self)
        rewrites.fold_sparse_indexers(self)
        rewrites.fold_clamped_glus(self)
        rewrites.fold_input_scaled_experts(self)
        rewrites.fold_residual_gates(self)
        rewrites.fold_gates(self)
        rewrites.fold_softcaps(self)
        rewrites.fold_bias_adds(self)
        rewrites.flatten_adds(self)
        rewrites.fold_slice_copies(self)
        rewrites.fold_head_concats(self)
        temperature.fold_temperatures(self)
        entries = []
        module_paths = {}  # layout node -> the source module it ran in (for the check's localisation)
        for node in nx.lexicographical_topological_sort(self.g, key=lambda n: self.g.nodes[n]["index"]):
            self._check_edges(node)
            path = self.g.nodes[node]["module_path"] or ""
            for entry in self._convert_refusing(node):
                entries.append(entry)
                module_paths[entry[0]] = path
        self._check_coverage()
        meta = {"name": type(self.model).__name__, "source": "import", "param_map": self.param_map,
                "aliases": dict(self.rec.meta.get("aliases", {})), "tied": self.tied, "reshaped": self.reshaped,
                "head_biases": self.head_biases, "module_paths": module_paths}
        return self._validated(entries, meta, module_paths)

    def _convert_refusing(self, node: str) -> list[Entry]:
        """:meth:`_convert`, where a pattern that fails on a node it was not written for (a KeyError, an
        AttributeError, ...: a recorded shape or call it does not expect) is a refusal naming the module and
        the recorded op, never a crash."""
        try:
            return self._convert(node)
        except ArchfuzzError:
            raise
        except Exception as exc:  # noqa: BLE001  (an importer limitation: refused by name)
            d = self.g.nodes[node]
            call = f" ({d['call']!r})" if d.get("call") not in (None, d["op"]) else ""
            raise self.refuse(node, f"the {d['op']}{call} import pattern does not handle this node: "
                              f"{type(exc).__name__}: {exc}") from exc

    def _validated(self, entries: list[Entry], meta: dict, module_paths: dict[str, str]) -> Layout:
        """The layout of ``entries``; one that breaks a layout constraint (:class:`LayoutError` on a node)
        is refused naming the source module that node came from and the op, not reported as a bad layout."""
        try:
            return Layout.from_nodes(entries, meta)
        except LayoutError as exc:
            node = exc.node
            op = next((e[1] for e in entries if e[0] == node), None)
            where = module_paths.get(node) or type(self.model).__name__ if node else type(self.model).__name__
            raise BadInput(f"cannot import {where} (the {op or 'layout'} node it converts to breaks a layout "
                           f"constraint: {exc})") from exc

    def _check_edges(self, node: str) -> None:
        for src, _, data in self.g.in_edges(node, data=True):
            twice = len(data.get("ports", [data["port"]])) > 1
            if twice and not (self.g.nodes[node]["op"] == "experts" and self.g.nodes[src]["op"] == "router"):
                raise self.refuse(node, f"{self.g.nodes[node]['op']} reads {src!r} twice")

    def take(self, node: str, roles: dict[str, str]) -> None:
        """Give ``node`` the parameters ``roles`` (role -> qualified name); every one it reads must be used."""
        read = set(self.g.nodes[node]["params"])
        if set(roles.values()) != read:
            raise self.refuse(node, f"reads parameters {sorted(read)} but only {sorted(roles.values())} "
                              f"have a role in a {self.g.nodes[node]['op']}")
        self.param_map[node] = dict(roles)
        self.parameters[node] = {role: self.named[name] for role, name in roles.items()}

    def no_params(self, node: str) -> None:
        d = self.g.nodes[node]
        if d["params"]:
            call = f" ({d['call']!r})" if d.get("call") not in (None, d["op"]) else ""
            raise self.refuse(node, f"{d['op']}{call} reads parameters {d['params']}, which the layout's "
                              f"{d['op']} does not own")

    def _convert(self, node: str) -> list[Entry]:
        """The layout nodes of one recorded node, by the importer pattern of its recorded op."""
        op = self.g.nodes[node]["op"]
        pattern = pattern_for(op)
        if pattern is None:
            raise self.refuse(node, f"recorded op {op!r} has no layout counterpart")
        if pattern.convert is None:
            raise self.refuse(node, f"{op} is never imported: {pattern.refusal}")
        ins = self.inputs(node)
        out = pattern.convert(self, node, ins)
        return out if isinstance(out, list) else [(node, pattern.op, out, ins)]

    def by_shape(self, node: str, want: dict[str, tuple[int, ...]]) -> None:
        """Assign the node's parameters to roles by shape (the roles wanted differ in rank)."""
        read = list(self.g.nodes[node]["params"])
        roles = {}
        for role, shape in want.items():
            hits = [p for p in read if len(self.shape(p)) == len(shape)]
            if len(hits) != 1 or self.shape(hits[0]) != shape:
                got = {p: self.shape(p) for p in read}
                raise self.refuse(node, f"{self.g.nodes[node]['op']} needs a {role} of shape {shape}, "
                                  f"reads {got}")
            roles[role] = hits[0]
        self.take(node, roles)

    def _refuse_repeated_layers(self) -> None:
        """A linear weight read by two or more recorded linears: the same layer runs more than once per forward
        (weight-shared recurrent depth, HRM's H / L cycles), which a layout of distinct nodes cannot express."""
        readers = defaultdict(list)
        for node, d in sorted(self.g.nodes(data=True), key=lambda nd: nd[1]["index"]):
            if d["op"] == "linear":
                for p in d["params"]:
                    readers[p].append(node)
        for p, nodes in readers.items():
            if len(nodes) > 1:
                raise self.refuse(nodes[1], f"recurrent depth: {self.g.nodes[nodes[0]]['module_path']} runs "
                                  f"{len(nodes)} times per forward with the same weight {p} (weight-shared layers, "
                                  f"e.g. HRM's H / L cycles); the layout runs each layer once")

    def _refuse_dynamic_masks(self) -> None:
        """An attention whose mask (sdpa's ``attn_mask``, port 3) is computed from the hidden states: the scores get
        a data-dependent mask (Doge's dynamic-mask attention), which the layout's attention cannot express.  A mask
        behind a sparse-attention indexer and an attention with unread sinks are left to their own refusals
        (:func:`~fuzz.importer.patterns.scores_activations_for_topk`, :func:`~fuzz.importer.patterns.sinks_unread`),
        which name the feature at its module."""
        for node, d in sorted(self.g.nodes(data=True), key=lambda nd: nd[1]["index"]):
            if d["op"] != "attention":
                continue
            masks = [s for s, _, port in self.g.in_edges(node, data="port") if port >= 3]
            if not masks:
                continue
            behind = nx.ancestors(self.g, masks[0]) | {masks[0]}
            if sinks_unread(self, node) or any(scores_activations_for_topk(self, n) for n in behind):
                continue  # refused by name as they convert: attention sinks, a sparse-attention indexer
            what = f"{self.g.nodes[masks[0]].get('call', self.g.nodes[masks[0]]['op'])} {masks[0]!r}"
            if any(self.g.nodes[a]["op"] == "embedding" for a in nx.ancestors(self.g, masks[0])):
                raise self.refuse(node, f"dynamic-mask attention: the attention mask is computed from the hidden "
                                  f"states ({what}, e.g. Doge's exp(A softplus(dt_proj(v)))); the layout's attention "
                                  f"masks by position only")
            raise self.refuse(node, f"a learned attention bias: the scores get a mask or bias computed from parameters "
                              f"({what}, e.g. a learned relative-position bias); the layout's attention has no such "
                              f"bias")

    def _refuse_per_expert_norms(self) -> None:
        """Each routed expert's output normalised with its own weight row: a norm's output times rows of an
        ``(E, H)`` parameter picked by indices computed from a ``topk`` (the routing choice; Ergo's
        ``ErgoExpertNorm``).  The layout's experts have no output norm; refused before the router's pieces, which
        would otherwise be refused one by one without naming the mechanism."""
        for node, d in sorted(self.g.nodes(data=True), key=lambda nd: nd[1]["index"]):
            if not (d["op"] == "opaque" and d.get("call") == "getitem" and len(d["params"]) == 1
                    and len(self.shape(d["params"][0])) == 2):
                continue
            rows = self.shape(d["params"][0])
            if not any(self.g.nodes[a].get("call") == "topk" for a in nx.ancestors(self.g, node)):
                continue
            for m in self.g.successors(node):
                others = [i for i in self.inputs(m) if i != node]
                if (self.g.nodes[m]["op"] == "mul" and others and self.g.nodes[others[0]]["op"] == "norm"
                        and (self.g.nodes[m].get("shape") or [None])[-1] == rows[1]):
                    path = d["module_path"]
                    module = type(self.modules[path]).__name__ if path in self.modules else "?"
                    raise self.refuse(node, f"per-expert output norm ({module}): each routed expert's output is "
                                      f"RMS-normalised and scaled by its own row of {d['params'][0]} {rows}, picked "
                                      f"by the routing indices, before the weighted sum; the layout's experts have "
                                      f"no output norm")

    def _check_coverage(self) -> None:
        owners = defaultdict(list)
        for node, roles in self.param_map.items():
            for name in roles.values():
                owners[name].append(node)
        shared = {n: o for n, o in owners.items() if len(o) > 1}
        if shared:
            raise BadInput(f"cannot import {type(self.model).__name__} (parameters read by more than one op: "
                           f"{shared}; only a tied lm_head may share the embedding table)")
        unused = sorted(set(self.named) - set(owners))
        if unused:
            raise BadInput(f"cannot import {type(self.model).__name__} (parameters the logits do not depend on: "
                           f"{unused}; an imported model would lose them)")
