"""Record the dataflow of a real causal LM by running it once: structure from dataflow, never from names.

:func:`record` runs one forward pass of ``model`` on a few token ids under a
:class:`torch.overrides.TorchFunctionMode` that sees every torch call, and keeps, for every live
tensor, the recorded node that produced it.  Reshapes, transposes, casts, ``contiguous`` and row
selections (anything that keeps the last axis) pass their producer through, so an edge joins two
computations, not two views.  Tensors derived only from parameters (``w.float()``, ``1 + w``,
``experts[e]``) carry the parameter names instead; tensors derived from neither (buffers, RoPE tables,
masks) are constants and make no node.

Recognition, bottom-up and name-free:

* op level: ``F.embedding`` / ``F.linear`` (or ``x @ W``, ``addmm``) reading a parameter, scaled
  dot-product attention, activations, ``add`` / ``mul`` of two activations, ``scale`` by a number;
  ``opaque`` for everything else (op-level nodes keep the torch function's name in ``call``);
* module level: a *parametric leaf* (a module owning parameters, none of its descendants owning any)
  is one node when its computation is a norm (it normalises and multiplies by its own 1-D
  parameters), fused experts (3-D parameters) or a top-k router (a linear then ``topk``, or Phimoe's
  sparsemixer: ``max`` / ``masked_fill`` / ``softmax``); a top-k router written across modules (a child
  ``nn.Linear``, a correction bias in a child or passed in by the parent) is one node from the dataflow:
  the nodes on the paths from its projection to the experts reading its choice;
* patterns: RoPE (an activation times constant tables plus its rotated copy times constant tables)
  and eager attention (``softmax(Q K^T) V``) are contracted to ``rope`` / ``attention`` nodes;
* the linear producing the logits is the ``lm_head``; it is ``tied_to`` the embedding when both read
  one parameter.

Only ancestors of the logits are kept.  Every node carries ``op``, ``module_path`` (the qualified name
of the executing module, or of the module owning the parameter it reads), ``params`` (canonical
qualified names: a tied parameter has one name, its first in ``named_parameters()``), ``index``
(execution order) and ``shape`` (of its output).  Edges carry ``port`` and the ``shape`` read;
``ports`` lists every port when a node reads one producer twice.

The package: :mod:`.graph` (the :class:`RecordedGraph` data, queries and JSON), :mod:`.recorder` (the
torch-function mode and :func:`record`), :mod:`.contract` (the contractions after the pass) and
:mod:`.calls` (the torch-call vocabulary and argument helpers).
"""

from .calls import _tensors  # _tensors, _input_ids and _logits: shared with fuzz.importer
from .graph import FORMAT, Consumer, RecordedGraph
from .recorder import DEFAULT_SEQ_LEN, _input_ids, _logits, device_of, evaluating, record

__all__ = ["FORMAT", "DEFAULT_SEQ_LEN", "Consumer", "RecordedGraph", "device_of", "evaluating", "record"]
