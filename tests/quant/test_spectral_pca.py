"""T5 spectral-PCA: exact in float64 on every layout with an RMS q/k norm, refused (with a documented
feature) everywhere else, and the symmetric-Gamma mutant is caught wherever a q/k norm meets RoPE."""

import re

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from fuzz import DecoderSpec, LayerSpec, build, materialize, strategies as S
from fuzz.decoder import DecoderSpec as Spec
from fuzz.errors import Refusal
from fuzz.materialize import GammaNorm, Norm
from quant.transforms import get
from quant.transforms.calibration import collect
from quant.transforms.graph_edit import LayoutEdit
from quant.transforms.spectral_pca import gamma_matrices, pca_basis, random_orthogonal, spectral_pca
from verifier import mutants, verify
from verifier._faults import inject
from verifier.transform import Calibration

EXACT = 1e-12
# every refusal spectral-pca may give on a decoder layout (head_chain's are unreachable from fuzz.decoder)
FEATURES = {"layernorm-qk-norm", "qk-norm-bias", "no-qk-norm"}
# a fused qkv linear: q and k are row slices of one projection, read from one activation
FUSED = {"fused-qkv", "shared-qk-activation", "shared-qk-projection"}
QK_NORMED = ("per_head", "full")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny matmuls: torch's intra-op threads cost more than they save (and thrash on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _spec(layout) -> Spec:
    return Spec.from_dict(layout.meta["spec"])


def _feature(verdict) -> str | None:
    m = re.search(r"\[([a-z0-9-]+)\]", verdict.message)
    return m.group(1) if m else None


def _check(layout, verdict) -> None:
    """Invariant to 1e-12 when the layout has an RMS q/k norm on separate q/k projections; otherwise refused
    for the documented reason (a fused qkv linear: ``fused-qkv``, whichever check comes first)."""
    s = _spec(layout)
    if s.mla != "none":  # multi-head latent attention: refused by name (its own projections, no q/k norm)
        assert verdict.status == "refused" and _feature(verdict) == "mla", verdict
        return
    if s.fused_qkv:
        assert verdict.status == "refused" and _feature(verdict) in FEATURES | FUSED, verdict
        return
    if s.qk_norm != "none" and s.norm == "rms":
        assert verdict.status == "invariant" and verdict.max_rel_err <= EXACT, verdict
        return
    assert verdict.status == "refused", verdict
    assert _feature(verdict) in FEATURES, verdict
    expected = "no-qk-norm" if s.qk_norm == "none" else "layernorm-qk-norm"
    assert _feature(verdict) == expected, verdict


# ---------------------------------------------------------------------------------------------- properties
@given(layout=S.layouts(qk_norm=QK_NORMED), seed=S.seeds(), rotation=st.sampled_from(("pca", "random")))
def test_exact_or_refused_on_qk_norm_layouts(layout, seed, rotation):
    _check(layout, verify(get("spectral-pca", rotation=rotation, seed=seed % 1000), layout, seed=seed % 97))


@given(layout=S.layouts(), seed=S.seeds())
def test_exact_or_refused_on_any_layout(layout, seed):
    _check(layout, verify(get("spectral-pca"), layout, seed=seed % 97))


@given(layout=S.layouts(qk_norm=QK_NORMED, norm="rms", fused_qkv=False), seed=S.seeds())
def test_symmetric_gamma_mutant_is_caught(layout, seed):
    """``Gamma = B^T diag(g) B`` outputs ``B^T z`` instead of ``z``: RoPE (and q.k) see rotated inputs."""
    verdict = verify(mutants.get("symmetric_gamma", seed=seed % 1000), layout, seed=seed % 97)
    if any(layer.rope for layer in _spec(layout).layers):
        assert verdict.status == "diverged", f"symmetric-Gamma mutant escaped: {verdict}"
        assert verdict.first_divergent is not None, verdict


# ---------------------------------------------------------------------------------------------- examples
BASE = dict(hidden=24, head_dim=6, layers=(LayerSpec(), LayerSpec(rope=False)))
CASES = {
    "per_head_gqa": dict(qk_norm="per_head", n_heads=4, n_kv_heads=2),
    "per_head_mqa_1pw_bias": dict(qk_norm="per_head", n_heads=3, n_kv_heads=1, norm_weight_form="1+w",
                                  qkv_bias=True),
    "per_head_output_gate": dict(qk_norm="per_head", n_heads=4, n_kv_heads=2, attn_gate="output_sigmoid",
                                 qkv_bias=True),
    "per_head_partial_interleaved": dict(qk_norm="per_head", n_heads=2, n_kv_heads=2, rotary_dim=2,
                                         rope_style="interleaved"),
    "full_gqa_1pw": dict(qk_norm="full", n_heads=4, n_kv_heads=2, norm_weight_form="1+w"),
    "full_mqa_output_gate_bias": dict(qk_norm="full", n_heads=3, n_kv_heads=1, attn_gate="output_sigmoid",
                                      qkv_bias=True),
    "full_mha_moe_parallel": dict(qk_norm="full", n_heads=2, n_kv_heads=2, residual="parallel",
                                  layers=(LayerSpec(sparse=True),)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_exact_on_named_layouts(case):
    layout = build(DecoderSpec(**{**BASE, **CASES[case]}))
    verdict = verify(get("spectral-pca"), layout, seed=3)
    assert verdict.status == "invariant" and verdict.max_rel_err <= EXACT, verdict
    mutant = verify(mutants.get("symmetric_gamma"), layout, seed=3)
    assert mutant.status == "diverged", mutant


@pytest.mark.parametrize("case", ["per_head_output_gate", "full_mqa_output_gate_bias"])
@pytest.mark.parametrize("options", [{"order": "ascending"}, {"rotation": "random", "seed": 7}])
def test_exact_with_other_bases(case, options):
    """Eigenvectors smallest first, or any seeded random orthogonal U_h: the function is the same."""
    verdict = verify(get("spectral-pca", **options), build(DecoderSpec(**{**BASE, **CASES[case]})), seed=5)
    assert verdict.status == "invariant" and verdict.max_rel_err <= EXACT, verdict


def test_norms_become_gamma_norms_and_heads_are_decorrelated():
    """After the transform every q/k norm is a gamma_norm of the same grouping, and the projection's heads
    have a diagonal second moment with descending eigenvalues (the rows now hold the principal axes)."""
    layout = build(DecoderSpec(**{**BASE, **CASES["per_head_output_gate"]}))
    model = materialize(layout)
    calib = Calibration(torch.randint(0, layout.params("tokens")["vocab"], (4, 12), generator=torch.Generator()
                                      .manual_seed(0)))
    out = spectral_pca(model, calib)
    for norm in ("l0_q_norm", "l0_k_norm", "l1_q_norm", "l1_k_norm"):
        assert out.layout.op(norm) == "gamma_norm"
        assert out.layout.params(norm)["groups"] == layout.params(norm)["groups"]
    assert [e["node"] for e in out.transform_log] == ["l0_q_norm", "l0_k_norm", "l1_q_norm", "l1_k_norm"]
    cov = collect(out, calib, head_cov=[("l0_q_proj", 4), ("l0_k_proj", 2)])["head_cov"]
    q = cov["l0_q_proj"][:, :6, :6]  # only the q half of each [q | gate] block is rotated
    for c in (q, cov["l0_k_proj"]):
        diag = torch.diagonal(c, dim1=-2, dim2=-1)
        assert torch.allclose(c, torch.diag_embed(diag), atol=1e-12 * c.abs().max())
        assert (diag[:, :-1] >= diag[:, 1:] - 1e-12).all()
    assert torch.equal(out.nodes["l0_q_proj"].weight[6:12], model.nodes["l0_q_proj"].weight[6:12])  # gate rows
    fresh = materialize(layout)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), fresh.parameters()))  # input untouched


def test_applying_twice_composes():
    """A second pass finds gamma_norms and composes ``Gamma' = Gamma B``: still exact."""
    layout = build(DecoderSpec(**{**BASE, **CASES["full_gqa_1pw"]}))

    def twice(model, calib):
        return spectral_pca(spectral_pca(model, calib, rotation="random", seed=1), calib)
    verdict = verify(twice, layout)
    assert verdict.status == "invariant" and verdict.max_rel_err <= EXACT, verdict


# ---------------------------------------------------------------------------------------------- refusals
@pytest.mark.parametrize("spec, feature", [
    (dict(qk_norm="per_head", norm="layer"), "layernorm-qk-norm"),
    (dict(qk_norm="full", norm="layer", norm_bias=True), "layernorm-qk-norm"),
    (dict(qk_norm="none"), "no-qk-norm"),
])
def test_refusals_name_the_feature(spec, feature):
    layout = build(DecoderSpec(**spec))
    with pytest.raises(Refusal) as exc:
        spectral_pca(materialize(layout), Calibration(torch.zeros(1, 4, dtype=torch.long)))
    assert exc.value.feature == feature and exc.value.transform == "spectral-pca"
    assert exc.value.path is not None and exc.value.op is not None


def test_refuses_norm_groups_that_split_heads():
    layout = build(DecoderSpec(qk_norm="per_head", n_heads=4, n_kv_heads=2, head_dim=8))
    layout = LayoutEdit(params={"l0_q_norm": {"dim": 4, "groups": 8}}).apply(layout)
    with pytest.raises(Refusal) as exc:
        spectral_pca(materialize(layout), Calibration(torch.zeros(1, 4, dtype=torch.long)))
    assert exc.value.feature == "qk-norm-splits-heads" and exc.value.path == "l0_q_norm"


def test_refuses_a_module_without_layout():
    with pytest.raises(Refusal) as exc:
        spectral_pca(nn.Linear(2, 2), Calibration(torch.zeros(1, 4, dtype=torch.long)))
    assert exc.value.feature == "module-without-layout"


# ---------------------------------------------------------------------------------------------- the identity
def _norms(heads: int, d: int, groups: int, g: torch.Tensor, gamma: torch.Tensor, eps: float = 1e-6):
    dim = heads * d // groups
    norm = Norm("n", {"kind": "rms", "dim": dim, "groups": groups, "eps": eps, "weight_form": "w", "bias": False},
                "exact")
    norm.weight = nn.Parameter(g)
    gnorm = GammaNorm("n", {"dim": dim, "groups": groups, "eps": eps}, "exact")
    gnorm.gamma = nn.Parameter(gamma)
    return norm, gnorm


def _rotate(y: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """``y_h -> U_h^T y_h`` per head (what the rotated projection rows produce)."""
    heads, d = u.shape[0], u.shape[-1]
    yh = y.reshape(*y.shape[:-1], heads, d)
    return torch.einsum("...hd,hde->...he", yh, u).reshape(y.shape)


@pytest.mark.parametrize("heads, d, groups", [(4, 6, 4), (4, 6, 1), (3, 8, 3), (2, 2, 1), (6, 4, 2)])
def test_gamma_identity_on_random_vectors(heads, d, groups):
    """``Gamma (B^T y) / rms(B^T y) = g * y / rms(y)`` with ``Gamma = diag(g) B``, to 1e-13."""
    gen = torch.Generator().manual_seed(heads * 100 + d * 10 + groups)
    g = 1.0 + 0.3 * torch.randn(heads * d // groups, generator=gen, dtype=torch.float64)
    y = 3.0 * torch.randn(5, 7, heads * d, generator=gen, dtype=torch.float64)
    u = random_orthogonal(heads, d, gen)
    norm, gnorm = _norms(heads, d, groups, g, gamma_matrices(g, u, groups))
    ref = norm(y)
    err = (gnorm(_rotate(y, u)) - ref).abs().max() / ref.abs().max()
    assert err <= 1e-13
    # the mutant: B^T diag(g) B makes the norm output B^T z, not z
    with inject("symmetric_gamma"):
        _, bad = _norms(heads, d, groups, g, gamma_matrices(g, u, groups))
    assert (bad(_rotate(y, u)) - _rotate(ref, u)).abs().max() / ref.abs().max() <= 1e-13
    assert (bad(_rotate(y, u)) - ref).abs().max() / ref.abs().max() > 1e-3


def test_eigenvector_order_and_signs_do_not_matter():
    """Any column permutation and sign flip of ``U_h`` is still orthogonal: the identity holds for all."""
    heads, d = 3, 6
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(heads, 50, d, generator=gen, dtype=torch.float64)
    u = pca_basis(x.transpose(1, 2) @ x / 50)
    lam = torch.diagonal(u.transpose(1, 2) @ (x.transpose(1, 2) @ x / 50) @ u, dim1=-2, dim2=-1)
    assert (lam[:, :-1] >= lam[:, 1:]).all()  # largest first by default
    assert torch.equal(pca_basis(x.transpose(1, 2) @ x / 50, "ascending"), u.flip(-1))
    g = 1.0 + 0.3 * torch.randn(d, generator=gen, dtype=torch.float64)
    y = torch.randn(4, heads * d, generator=gen, dtype=torch.float64)
    for _ in range(5):
        perm = torch.randperm(d, generator=gen)
        signs = torch.randint(0, 2, (heads, 1, d), generator=gen).double() * 2 - 1
        v = u[:, :, perm] * signs
        norm, gnorm = _norms(heads, d, heads, g, gamma_matrices(g, v, heads))
        ref = norm(y)
        assert (gnorm(_rotate(y, v)) - ref).abs().max() / ref.abs().max() <= 1e-13


def test_bad_option_is_rejected():
    with pytest.raises(ValueError):
        spectral_pca(materialize(build(DecoderSpec(qk_norm="per_head"))), None, rotation="hadamard")
