"""Issue 12, the oracle: no vacuous proofs, causality at every probed position, a verdict whatever the
transform does, and layouts that cannot be degenerate.  Each test fails on 3fbf478."""

import math
import signal
import threading
import time

import pytest
import torch
from torch import nn

from fuzz import BadInput, DecoderSpec, LayerSpec, Layout, build, materialize
from fuzz.errors import LayoutError
from verifier import mutants, reference, verify
from verifier.registry import resolve

# pre-norm, sequential, plain q/k with RoPE: both mutants below apply (verifier.mutants.APPLIES)
SPEC = DecoderSpec(layers=(LayerSpec(), LayerSpec()), hidden=24, head_dim=8, embedding_multiplier=0.5)
MUTANTS = ("mutants:skip_norm_consumer", "mutants:float32_rotation")


# ------------------------------------------------------------------------------ degenerate subjects
def _zero_scale(model):  # the "embedding scale factor 0.0", past layout validation
    model.nodes["embed_scale"].p["factor"] = 0.0


def _inf_eps(model):  # the "norm eps is infinite": every norm outputs zeros
    for node, module in model.nodes.items():
        if "eps" in module.p:
            module.p["eps"] = math.inf


def _zero_lm_head(model):
    with torch.no_grad():
        model.nodes["lm_head"].weight.zero_()


def _zero_embedding(model):
    with torch.no_grad():
        model.nodes["embed"].weight.zero_()


DEGENERATE = {"scale 0": _zero_scale, "eps inf": _inf_eps, "zero lm_head": _zero_lm_head,
              "zero embedding": _zero_embedding}


def test_the_mutants_are_caught_on_the_healthy_subject():
    """The same layout, not degenerate: both mutants diverge, a correct transform is invariant with its control."""
    model = materialize(build(SPEC))
    for name in MUTANTS:
        assert verify(resolve(name), model).status == "diverged", name
    good = verify(reference.get("permute_hidden", seed=1), model)
    assert good.ok and good.control["passed"] and good.control["units"] >= 10
    assert good.to_dict()["control"]["weakest"]["measured"] > good.tolerance["rel"]


@pytest.mark.parametrize("case", sorted(DEGENERATE))
@pytest.mark.parametrize("mutant", MUTANTS)
def test_degenerate_graph_subject_is_never_invariant(case, mutant):
    model = materialize(build(SPEC))
    DEGENERATE[case](model)
    verdict = verify(resolve(mutant), model)
    assert verdict.status == "degenerate", verdict
    assert not verdict.ok and "positive control" in verdict.message
    control = verdict.to_dict()["control"]
    assert control["passed"] is False and control["reason"] in verdict.message and "0" in control["reason"]


def test_dead_attention_is_found_by_the_per_parameter_control():
    """Only the attention norms have an infinite eps: the logits still vary, but the attention norms' weights
    and q/k/v/o of every layer are dead, so the float32 rotation of q/k cannot show.  The control names one."""
    model = materialize(build(SPEC))
    for layer in (0, 1):
        model.nodes[f"l{layer}_attn_norm"].p["eps"] = math.inf
    verdict = verify(resolve("mutants:float32_rotation"), model)
    assert verdict.status == "degenerate", verdict
    reason = verdict.control["reason"]
    dead = [f"l{i}_{n}" for i in (0, 1) for n in ("attn_norm (norm)", "q_proj", "k_proj", "v_proj", "o_proj")]
    assert "cannot see" in reason and any(reason.startswith(f"changing {d}") for d in dead), reason
    assert verdict.control["position_spread"] > 0.01  # not the spread check: the parameter check


class DeadBranch(nn.Module):
    """A causal LM (embedding + causal running mean) with a linear whose output is multiplied by zero."""

    config = type("C", (), {"vocab_size": 17})()

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.emb = nn.Embedding(17, 6, dtype=torch.float64)
        self.mix = nn.Linear(6, 6, dtype=torch.float64)
        self.dead = nn.Linear(6, 6, dtype=torch.float64)
        self.out = nn.Linear(6, 17, dtype=torch.float64)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64))

    def forward(self, ids):
        h = self.emb(ids)
        h = h.cumsum(1) / torch.arange(1, ids.shape[1] + 1, dtype=h.dtype)[None, :, None]
        return self.out(torch.tanh(self.mix(h)) + 0.0 * self.dead(h))


def test_degenerate_foreign_module_names_the_dead_linear():
    def break_dead(model, calib):  # a real change, to a weight the logits cannot see
        with torch.no_grad():
            model.dead.weight.mul_(3.0)
        return model

    def break_mix(model, calib):
        with torch.no_grad():
            model.mix.weight.mul_(1.0 + 1e-6)
        return model

    verdict = verify(break_dead, DeadBranch())
    assert verdict.status == "degenerate" and "dead" in verdict.control["reason"], verdict
    assert verify(break_mix, DeadBranch()).status == "diverged"


def test_healthy_foreign_module_passes_its_control_with_the_gradient_confirmed():
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=40, hidden_size=16, intermediate_size=24, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32)
    model = LlamaForCausalLM(cfg).to(torch.float64).eval()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model.model.layers[0].mlp.requires_grad_(False)  # frozen parameters: differentiated through aliases
    verdict = verify(reference.get("identity"), model, batch=2, seq=6)
    assert verdict.ok, verdict
    c = verdict.control
    assert c["passed"] and c["gradient"] and c["gradient_confirmed"]
    assert 0.5 <= c["linearity"] <= 2.0 and c["measured"][c["weakest"]["unit"]] > verdict.tolerance["rel"]
    for name, p in model.named_parameters():  # the subject is read, never written
        assert torch.equal(p, before[name]) and p.grad is None
        assert p.requires_grad == (".mlp." not in name)


def test_assert_invariant_fails_on_a_degenerate_subject_without_recording_a_finding(tmp_path, monkeypatch):
    from verifier import assert_invariant
    monkeypatch.setenv("ARCHFUZZ_CORPUS", str(tmp_path))
    model = materialize(build(SPEC))
    _zero_scale(model)
    with pytest.raises(AssertionError, match="degenerate"):
        assert_invariant(mutants.get("skip_norm_consumer"), model)
    assert not any(tmp_path.iterdir())


def test_assert_invariant_records_a_reduced_finding_once_in_the_corpus_it_is_given(tmp_path, monkeypatch):
    """``ARCHFUZZ_CORPUS=DIR``: a failing property writes its reduced layout there, and a second failure with
    the same signature is reported as known (no second entry)."""
    from verifier import assert_invariant
    from verifier import pytest_plugin
    from verifier.corpus import load_entries
    monkeypatch.setenv("ARCHFUZZ_CORPUS", str(tmp_path))
    monkeypatch.setattr(pytest_plugin, "_RECORDED", set())
    layout = build(SPEC.with_(qkv_bias=True))
    with pytest.raises(AssertionError, match="corpus: new entry") as first:
        assert_invariant(mutants.get("forget_pair_bias"), layout)
    entries, bad = load_entries(tmp_path)
    assert not bad and len(entries) == 1
    meta = entries[0].meta
    assert meta["transform"]["name"] == "forget_pair_bias" and meta["status"] == "open"
    reduced = Layout.from_json((entries[0].path / "layout.json").read_text())
    assert len(reduced.order) <= len(layout.order) and "bias:qkv" in reduced.features()
    assert str(entries[0].path) in str(first.value)
    monkeypatch.setattr(pytest_plugin, "_RECORDED", set())
    with pytest.raises(AssertionError, match="corpus: known"):
        assert_invariant(mutants.get("forget_pair_bias"), layout)
    assert len(load_entries(tmp_path)[0]) == 1


# ------------------------------------------------------------------------------ causality
class PrefixLM(nn.Module):
    """The first 4 positions see each other (a prefix-LM); after them, a causal running mean."""

    config = type("C", (), {"vocab_size": 19})()

    def __init__(self, prefix: int = 4):
        super().__init__()
        torch.manual_seed(1)
        self.prefix = prefix
        self.emb = nn.Embedding(19, 8, dtype=torch.float64)
        self.out = nn.Linear(8, 19, dtype=torch.float64)

    def forward(self, ids):
        h = self.emb(ids)
        causal = h.cumsum(1) / torch.arange(1, ids.shape[1] + 1, dtype=h.dtype)[None, :, None]
        k = min(self.prefix, ids.shape[1])
        ctx = torch.cat([h[:, :k].mean(1, keepdim=True).expand(-1, k, -1), causal[:, k:]], dim=1)
        return self.out(torch.tanh(h + ctx))


class LookAhead(PrefixLM):
    """Position i also reads token i + 2, but never the last token."""

    def forward(self, ids):
        h = self.emb(ids)
        causal = h.cumsum(1) / torch.arange(1, ids.shape[1] + 1, dtype=h.dtype)[None, :, None]
        ahead = torch.zeros_like(h)
        ahead[:, :-3] = h[:, 2:-1]
        return self.out(torch.tanh(h + causal + 0.5 * ahead))


class Causal(PrefixLM):
    def __init__(self):
        super().__init__(prefix=1)  # a prefix of one position is plain causal


@pytest.mark.parametrize("subject", [PrefixLM, LookAhead])
def test_non_causal_subjects_are_refused(subject):
    with pytest.raises(BadInput, match="not causal.*position"):
        verify(reference.get("identity"), subject())
    assert verify(reference.get("identity"), Causal()).ok  # the same construction, causal, is proven


def test_a_transform_that_makes_the_model_non_causal_has_its_own_status():
    class PeekNext(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, ids):
            y = self.inner(ids)
            return torch.cat([y[:, :-1] + 1e-3 * y[:, 1:], y[:, -1:]], dim=1)  # position i reads i + 1

    layout = build(DecoderSpec())
    verdict = verify(lambda model, calib: PeekNext(model), layout)
    assert verdict.status == "non-causal", verdict
    assert "not causal" in verdict.message and verdict.causality["transformed_max_rel"] > 1e-9
    from verifier.oracle import FAILING
    assert "non-causal" in FAILING
    ok = verify(reference.get("identity"), layout)
    assert ok.causality == {"tokens_perturbed": [1, 2, 6, 11], "subject_max_rel": 0.0, "transformed_max_rel": 0.0}


# ------------------------------------------------------------------------------ whatever the transform does
class Reshaped(nn.Module):
    """Wraps the model and rewrites its logits with ``fn``."""

    def __init__(self, inner, fn):
        super().__init__()
        self.inner, self.fn = inner, fn

    def forward(self, ids):
        return self.fn(self.inner(ids))


def _wrap(fn):
    return lambda model, calib: Reshaped(model, fn)


def test_other_vocabulary_or_shape_is_an_error_verdict():
    layout = build(DecoderSpec(vocab=40))
    bigger = verify(_wrap(lambda y: torch.cat([y, y[..., :1]], dim=-1)), layout)  # 41 columns: a RuntimeError on 3fbf478
    assert bigger.status == "error" and "vocabulary 41 instead of 40" in bigger.message, bigger
    one_column = verify(_wrap(lambda y: y[..., :1]), layout)  # broadcast against 40 columns on 3fbf478
    assert one_column.status == "error" and "shape (8, 12, 1), expected (8, 12, 40)" in one_column.message
    shorter = verify(_wrap(lambda y: y[:, :-1]), layout)
    assert shorter.status == "error" and "not a causal LM" in shorter.message


def test_wrong_return_types_are_error_verdicts():
    layout = build(DecoderSpec())
    complex_logits = verify(_wrap(lambda y: y + 1j * torch.ones_like(y)), layout)  # invariant on 3fbf478
    assert complex_logits.status == "error" and "complex" in complex_logits.message, complex_logits
    int_logits = verify(_wrap(lambda y: (1000 * y).round().long()), layout)
    assert int_logits.status == "error" and "torch.int64" in int_logits.message
    assert "returned NoneType" in verify(lambda model, calib: None, layout).message
    returned_class = verify(lambda model, calib: type(model), layout)
    assert returned_class.status == "error" and "returned type" in returned_class.message


def test_exceptions_in_the_transformed_forward_are_error_verdicts():
    class Output:
        @property
        def logits(self):
            raise RuntimeError("no logits today")

    layout = build(DecoderSpec())
    lazy = verify(_wrap(lambda y: Output()), layout)  # a traceback on 3fbf478
    assert lazy.status == "error" and "no logits today" in lazy.message, lazy

    def boom(y):
        raise ValueError("forward exploded")

    crashed = verify(_wrap(boom), layout)
    assert crashed.status == "error" and "ValueError: forward exploded" in crashed.message


def _sleepy(model, calib):
    time.sleep(30)
    return model


def test_a_hanging_transform_times_out():
    layout = build(DecoderSpec())
    start = time.monotonic()
    verdict = verify(_sleepy, layout, timeout=1.0)
    assert time.monotonic() - start < 10
    assert verdict.status == "timeout" and "during the transform" in verdict.message, verdict
    from verifier.oracle import FAILING
    assert "timeout" in FAILING

    def spins(y):
        while True:  # a transformed forward that never returns
            pass

    hang = verify(_wrap(spins), layout, timeout=1.0)
    assert hang.status == "timeout" and "transformed forward" in hang.message
    assert verify(reference.get("identity"), layout, timeout=60).ok  # a generous limit changes nothing


def test_timeout_restores_the_callers_alarm_and_checks_its_argument():
    fired = []
    previous = signal.signal(signal.SIGALRM, lambda *a: fired.append(1))
    try:
        signal.setitimer(signal.ITIMER_REAL, 3.0)
        assert verify(reference.get("identity"), build(DecoderSpec()), timeout=30).ok
        assert signal.getsignal(signal.SIGALRM) is not None and 0 < signal.getitimer(signal.ITIMER_REAL)[0] <= 3.0
        signal.setitimer(signal.ITIMER_REAL, 0)
    finally:
        signal.signal(signal.SIGALRM, previous)
    for bad in (0, -1.0, math.nan, math.inf, "5", True):
        with pytest.raises(BadInput, match="timeout"):
            verify(reference.get("identity"), build(DecoderSpec()), timeout=bad)


def test_off_the_main_thread_a_late_phase_still_ends_in_timeout():
    def slow(model, calib):
        time.sleep(1.5)
        return model

    result = {}
    worker = threading.Thread(target=lambda: result.update(v=verify(slow, build(DecoderSpec()), timeout=0.5)))
    worker.start()
    worker.join(60)
    assert result["v"].status == "timeout" and "transform" in result["v"].message


# ------------------------------------------------------------------------------ validation
BAD_VALUES = [
    ("norm_eps", math.inf, "l0_attn_norm", "eps"), ("norm_eps", 0.0, "l0_attn_norm", "eps"),
    ("norm_eps", math.nan, "l0_attn_norm", "eps"), ("norm_eps", 1.0, "l0_attn_norm", "eps"),
    ("rope_theta", 0.0, "l0_k_rope", "theta"), ("rope_theta", math.inf, "l0_k_rope", "theta"),
    ("rope_theta", math.nan, "l0_k_rope", "theta"), ("rope_theta", -1e4, "l0_k_rope", "theta"),
    ("embedding_multiplier", 0.0, "embed_scale", "factor"), ("embedding_multiplier", math.inf, "embed_scale", "factor"),
    ("residual_multiplier", math.nan, "l0_attn_scale", "factor"), ("logit_multiplier", 1e-300, "logit_scale", "factor"),
    ("logit_multiplier", 1e300, "logit_scale", "factor"),
]


@pytest.mark.parametrize("field,value,node,param", BAD_VALUES)
def test_validation_rejects_degenerate_or_non_finite_parameters(field, value, node, param):
    with pytest.raises(LayoutError) as err:
        build(DecoderSpec(**{field: value}))
    msg = str(err.value)
    assert repr(node) in msg and f".{param}={value!r}" in msg and "must be" in msg, msg
    data = build(DecoderSpec(embedding_multiplier=0.5, residual_multiplier=0.25, logit_multiplier=0.125)).to_dict()
    for entry in data["nodes"]:  # the same value in a layout JSON
        if entry["id"] == node:
            entry[param] = value
    with pytest.raises(LayoutError, match=f"{node}.*{param}"):
        Layout.from_dict(data)
    for spec in (DecoderSpec(norm_eps=1e-12), DecoderSpec(norm_eps=1e-5, rope_theta=1e6),  # what real models use
                 DecoderSpec(embedding_multiplier=12.0, residual_multiplier=0.22, logit_multiplier=1 / 8),
                 DecoderSpec(rope_theta=500.0, embedding_multiplier=-2.0)):
        build(spec)


def test_statuses_have_one_source():
    from verifier import oracle
    assert set(oracle.FAILING) <= set(oracle.STATUSES)
    assert {"degenerate", "non-causal", "timeout"} <= set(oracle.STATUSES)
    assert not {"invariant", "refused", "inconclusive", "degenerate"} & set(oracle.FAILING)
