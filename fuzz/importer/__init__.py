"""Import a real causal LM as a :class:`~fuzz.materialize.GraphModel` that shares its parameters.

:func:`import_model` records the model's dataflow (:func:`fuzz.record.record`), converts the
:class:`~fuzz.record.RecordedGraph` into a valid :class:`~fuzz.layout.Layout` and builds a
:class:`GraphModel` whose node modules hold *the same* ``nn.Parameter`` objects as the source model:
an in-place edit of a GraphModel weight edits the source model too.  With ``check=True`` (the default;
every path that proves or ships anything uses it) both models run on the same token ids and the import is
refused unless the logits agree: the conversion is checked, not assumed (:func:`check_import`).

:func:`export_weights` is the way back: qualified parameter name -> tensor of an imported (possibly
transformed) GraphModel, ready for ``load_state_dict`` on a fresh model of the source class.

The rooms: :mod:`.api` (this public surface), :mod:`.check` (the import check: lengths, float32-cast
counting, bounds), :mod:`.divergence` (the first divergent node and limited spans, for a refusal),
:mod:`.logits` (running both sides), :mod:`.converter` (recorded graph -> layout nodes), :mod:`.rewrites`
(exact rewrites of the recording), :mod:`.patterns` (one importer pattern per layout op, registered with
``@import_pattern``), :mod:`.rope` (RoPE theta, measured), :mod:`.temperature` (attention temperature
tuning, measured from the recorded per-position table: Llama-4's steps, or Beam's power form read at far
position_ids), :mod:`.window` (sliding windows and chunked attention, measured),
:mod:`.positions` (learned positions that follow the attention_mask or not, measured on a padded batch).
"""

from .api import export_weights, import_model
from .check import CHECK_BATCH, CHECK_LENGTHS, FLOAT32_EPS, FLOAT32_FACTOR, SPAN_MARGIN, TOLERANCE, check_import, check_lengths
from .patterns import IMPORT_PATTERNS, import_pattern, refuse_import

__all__ = ["CHECK_BATCH", "CHECK_LENGTHS", "FLOAT32_EPS", "FLOAT32_FACTOR", "IMPORT_PATTERNS", "SPAN_MARGIN",
           "TOLERANCE", "check_import", "check_lengths", "export_weights", "import_model", "import_pattern",
           "refuse_import"]
