"""An exact tie at the indexer's ``topk``-th place (relu's zeros) is not a margin of ``inf`` when the row has a near-tie
elsewhere: ``torch.topk``'s pick among equal scores follows the comparisons of the whole row, so a comparison that
round-off flips anywhere in it can move the pick.  The head permutation's 1e-15 differences did exactly that (keys 0
and 1 of a query's row 1e-15 apart, keys 3, 5, 6 tied at 0 for the 3rd place: the subject read key 5, its permuted copy
key 6, the only one its sliding window of 2 keeps), and ``permute_heads`` was DIVERGED (rel 0.81 at ``l1_attn``) on
the layout below, drawn by ``benchmarks.bench_verify --examples 300``.  Such a query's margin is now the row's smallest
gap between distinct readable scores, so the oracle sets it aside like any near-tie; the selection itself is still
transformers' ``torch.topk``."""

import torch

from fuzz import build, materialize
from fuzz.decoder import DecoderSpec, LayerSpec
from fuzz.materialize import MODULES
from fuzz.ops import spec
from verifier import reference, verify
from verifier.outcomes import Status

_INF = float("inf")
# one query's index scores (query 7 of 13) in the subject and in its head-permuted copy: keys 3, 5 and 6 score
# exactly 0 in both, the 3rd place is a tie among them, every other score differs by round-off only
_SUBJECT = [-0.005292230262370774, -0.005292230262370764, 0.6142316274477883, 0.0, -0.004911483234104987, 0.0, 0.0,
            -0.0016109948727536139] + [-_INF] * 5
_PERMUTED = [-0.005292230262370485, -0.005292230262370487, 0.6142316274477891, 0.0, -0.00491148323410473, 0.0, 0.0,
             -0.0016109948727535215] + [-_INF] * 5


def _node(topk: int):
    return MODULES["index_topk"]("i", spec("index_topk").normalise("i", {"n_heads": 1, "head_dim": 1, "topk": topk}),
                                 "exact")


def _select(row: list[float]):
    """The node run on a query ``7`` whose index scores are ``row`` (13 keys): its selection and its margin."""
    node = _node(3)
    index = torch.tensor(row, dtype=torch.float64).expand(1, 13, 13)
    node._scores = lambda q, k, w, padding: (index, 3)  # the recorded scores, as the node's own
    zeros = torch.zeros(1, 13, 1, dtype=torch.float64)
    sel = node(zeros, zeros, zeros)
    assert bool(node.exact_ties[0, 7])
    return sel[0, 7].nonzero().flatten().tolist(), float(node.last_margin[0, 7])


def test_an_exact_tie_takes_the_rows_smallest_gap_as_its_margin():
    (picked, margin), (picked_perm, margin_perm) = _select(_SUBJECT), _select(_PERMUTED)
    assert 2 in picked and 2 in picked_perm  # the best key, then two of the tied zeros (3, 5, 6): torch's pick
    assert margin < 1e-13 and margin_perm < 1e-13  # keys 0 and 1: a near-tie the oracle sets aside
    # the same exact tie with no near-tie in the row: a margin the oracle keeps (no position is dropped for it)
    _, clean = _select([-0.5, -0.25, 0.6142316274477883, 0.0, -0.125, 0.0, 0.0, -0.0625] + [-_INF] * 5)
    assert clean == 0.5


def test_permute_heads_is_invariant_on_the_layout_with_an_exact_index_tie():
    s = DecoderSpec(
        vocab=48, hidden=33, layers=(LayerSpec(rope=True, sparse=True, sliding=False),
                                     LayerSpec(rope=False, sparse=False, sliding=True)),
        n_heads=4, n_kv_heads=2, head_dim=8, qk_norm="full", rope_style="interleaved", rope_scaling="proportional",
        qkv_bias=True, o_bias=True, attn_gate="output_sigmoid", sliding_window=2, mlp="relu2", intermediate=112,
        mlp_bias=True, n_experts=3, top_k=1, moe_intermediate=92, shared_intermediate=102, routed_scaling=2.5,
        expert_form="bias", norm_weight_form="1+w", norm_bias=True, norm_eps=1e-05, placement="post",
        parallel_shared_norm=False, embedding_multiplier=3.0, final_softcap=4.0, extra_input_id=True,
        positions_from_mask=True, attn_temperature=0.1, attn_temperature_length=2, norm_weightless=True,
        mlp_xielu=True, per_layer_input=4, attn_temperature_form="power", sparse_index_topk=3)
    v = verify(reference.get("permute_heads", seed=1), materialize(build(s), seed=377), seed=1)
    assert v.status == Status.INVARIANT, (v.status, v.first_divergent, v.max_rel_err)
