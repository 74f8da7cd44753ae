"""Issue 12 item 6: every CLI argument is checked before any work starts; a user error exits 2 with one
line on stderr naming the argument and what it allows.  Layout JSON is validated whole, transform
options against the transform's signature, ``--require`` against what ``strategies.layouts`` accepts,
and a size guard refuses a layout whose parameters exceed a limit before anything is allocated."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from archfuzz.cli import main
from fuzz import BadInput, DecoderSpec, Layout, build, materialize, strategies
from verifier.registry import resolve

ROOT = Path(__file__).resolve().parents[2]


def _refuse_work(*args, **kwargs):
    raise AssertionError("the command started its work despite a bad argument")


@pytest.fixture
def no_work(monkeypatch):
    """Every slow entry point of the CLI raises: a bad argument must stop the command before them."""
    import archfuzz.gate
    import quant.checkpoints
    import quant.parity
    import verifier
    import verifier.campaign
    import verifier.corpus_seed
    for module, name in [(verifier.campaign, "run_campaign"), (archfuzz.gate, "run_gate"), (verifier, "verify"),
                         (verifier.corpus_seed, "seed"),
                         (quant.checkpoints, "load_checkpoint"), (quant.parity, "load_subject"),
                         (quant.parity, "compare")]:
        monkeypatch.setattr(module, name, _refuse_work)


def run(argv, capsys) -> tuple[int, str]:
    """``main(argv)`` in-process: (exit status, stderr), argparse's own exits included."""
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    return code, capsys.readouterr().err


@pytest.fixture
def files(tmp_path):
    """A valid layout, a layout far over the size guard, a plain file and a missing path."""
    good = build(DecoderSpec()).save(tmp_path / "layout.json")
    huge = build(DecoderSpec(hidden=10**9)).save(tmp_path / "huge.json")
    plain = tmp_path / "plain.txt"
    plain.write_text("text")
    return {"GOOD": str(good), "HUGE": str(huge), "FILE": str(plain), "MISSING": str(tmp_path / "missing"),
            "DIR": str(tmp_path)}


Q = ["quantize", "--recipe", "bbt-spectral", "--out", "{DIR}/q"]
V = ["verify", "{GOOD}", "--transform"]

# (argv, text the one-line error must contain); {NAME} is replaced by files[NAME]
CASES = [
    # the issue's own cases
    (V + ["reference:permute_heads", "--option", "seed=abc"], "option seed='abc' must be int"),
    (["fuzz", "--max-examples", "0"], "argument --max-examples"),
    (["fuzz", "--max-examples", "-3"], "argument --max-examples"),
    (["fuzz", "--require", "max_layers=0"], "max_layers=0 must be an integer in [1, 64]"),
    (["fuzz", "--require", "moe=maybe"], "moe='maybe' must be True, False or None"),
    (["replay", "--root", "{MISSING}"], "no such folder"),
    (["replay", "--root", "{FILE}"], "is not a folder"),
    (["replay", "--root", ""], "argument --root: expected a path, got an empty one"),
    (["corpus", "seed", "--root", " "], "argument --root: expected a path, got an empty one"),
    (["verify", "{HUGE}", "--transform", "reference:identity"], "over the limit of 4,294,967,296 bytes"),
    # fuzz
    (["fuzz", "--seed", "-1"], "argument --seed"),
    (["fuzz", "--seed", str(2**32)], "argument --seed"),
    (["fuzz", "--out", "{FILE}"], "argument --out"),
    (["fuzz", "--corpus", "{FILE}"], "argument --corpus"),
    (["fuzz", "--out", ""], "argument --out: expected a folder, got an empty path"),
    (["fuzz", "--out", "{FILE}/sub"], "is not a writable folder"),
    (["fuzz", "--transform", "reference:nope"], "unknown transform 'reference:nope'"),
    (["fuzz", "--transform", "reference:identity", "--transform", "reference:identity"], "given twice"),
    (["fuzz", "--require", "qk_norm"], "argument --require: expected KEY=VALUE"),
    (["fuzz", "--require", "=3"], "argument --require: expected KEY=VALUE"),
    (["fuzz", "--require", "max_hidden=1000000000"], "max_hidden=1000000000 must be an integer in [4, 65536]"),
    (["fuzz", "--require", "hidden=0"], "hidden=0 is not a positive integer"),
    (["fuzz", "--require", "qkv_bias='yes'"], "qkv_bias='yes' is not True or False"),
    (["fuzz", "--require", "n_experts=8"], "'n_experts' cannot be pinned"),
    (["fuzz", "--require", "n_heads=3"], "not a multiple of n_kv_heads"),
    (["fuzz", "--require", "head_dim=5"], "head_dim=5 is odd"),
    (["fuzz", "--require", "residual='parallel'"], "needs placement without 'post'"),
    (["fuzz", "--require", "rope_theta=-1.0"], "rope_theta=-1.0 is not a finite number > 0"),
    (["fuzz", "--require", "moe=True", "--require", "moe=False"], "'moe' given twice"),
    (["fuzz", "--require", "max_hidden=65536", "--require", "max_layers=64"], "--require allows layouts too large"),
    (["fuzz", "--max-param-bytes", "0"], "argument --max-param-bytes"),
    (["fuzz", "--max-param-bytes", "4GB"], "argument --max-param-bytes"),
    # verify
    (V + ["reference:identity", "--option", "seed=1"], "has no option 'seed'"),
    (V + ["reference:permute_heads", "--option", "seed"], "argument --option: expected KEY=VALUE"),
    (V + ["reference:permute_heads", "--option", "seed=1", "--option", "seed=2"], "'seed' given twice"),
    (V + ["mutants:float32_rotation", "--option", "rotation=pca"], "'rotation' is fixed by the transform"),
    (V + ["mutants:pair_reflection", "--option", "force_det=True"], "has no option 'force_det'"),
    (V + ["quant:norm-absorb", "--option", "alpha='high'"], "option alpha='high' must be float"),
    (V + ["quant:pair-pca", "--option", "rotation=hadamrd"], "rotation='hadamrd' must be one of 'pca', 'random'"),
    (V + ["quant:norm-absorb", "--option", "on_unsupported=ignore"], "must be one of 'refuse', 'skip'"),
    (V + ["reference:identity", "--seed", "-5"], "argument --seed"),
    (V + ["reference:identity", "--max-param-bytes", "1KiB"], "over the limit of 1,024 bytes"),
    # gate
    (["gate", "--max-examples", "0"], "argument --max-examples"),
    (["gate", "--root", "{MISSING}"], "argument --root"),
    (["gate", "--out", "{FILE}"], "argument --out"),
    # quantize
    (Q + ["--group-size", "0"], "argument --group-size"),
    (Q + ["--alpha", "-1"], "argument --alpha"),
    (Q + ["--alpha", "nan"], "argument --alpha"),
    (Q + ["--iters", "-1"], "argument --iters"),
    (Q + ["--nsamples", "0"], "argument --nsamples"),
    (Q + ["--seqlen", "1"], "argument --seqlen"),
    (Q + ["--batch-size", "0"], "argument --batch-size"),
    (Q + ["--lr", "0"], "argument --lr"),
    (Q + ["--lowbit-seq", "0"], "argument --lowbit-seq"),
    (Q + ["--seed", "-1"], "argument --seed"),
    (Q + ["--calib-text", "{MISSING}"], "argument --calib-text"),
    (Q + ["--eval-text", "{DIR}"], "argument --eval-text"),
    (Q + ["--no-eval", "--eval-text", "{FILE}"], "--eval-text has no use with --no-eval"),
    (Q + ["--checkpoint", "{MISSING}"], "argument --checkpoint"),
    (["quantize", "--recipe", "bbt-spectral", "--out", "{FILE}"], "argument --out"),
    (Q + ["--lowbit-new-tokens", "0"], "argument --lowbit-new-tokens"),
    (Q + ["--embedding", "f16"], "--embedding applies to the low-bit artifacts: add --lowbit"),
    (Q + ["--lowbit", "--embedding", "int4"], "argument --embedding: invalid choice"),
    (Q + ["--autoround-option", "enable_neuqui=True"], "unknown auto-round option(s) ['enable_neuqui']"),
    (Q + ["--autoround-option", "minmax_lr"], "argument --autoround-option: expected KEY=VALUE"),
    # generate
    (["generate", "{MISSING}", "--prompt", "hi"], "argument dir"),
    (["generate", "{DIR}", "--prompt", "hi"], "is not a stateful OpenVINO artifact"),
    (["generate", "{DIR}", "--prompt", "hi", "--max-new-tokens", "0"], "argument --max-new-tokens"),
    (["generate", "{DIR}", "--prompt", "hi", "--backend", "fast"], "argument --backend: invalid choice"),
    # parity
    (["parity", "--seq", "0"], "argument --seq"),
    (["parity", "--seq", "1"], "argument --seq"),
    (["parity", "--batch", "0"], "argument --batch"),
    (["parity", "--timeout", "-1"], "argument --timeout"),
    (["parity", "--timeout", "inf"], "argument --timeout"),
    (["parity", "--layout", "{MISSING}"], "argument --layout"),
    (["parity", "--layout", "{HUGE}"], "over the limit of 4,294,967,296 bytes"),
    (["parity", "--layout", "{GOOD}", "--text", "{FILE}"], "--text applies to a checkpoint"),
    (["parity", "--layout", "{GOOD}", "--option", "seed=1"], "--option needs --transform"),
    (["parity", "--layout", "{GOOD}", "--transform", "reference:permute_heads", "--option", "seed=x"],
     "option seed='x' must be int"),
    (["parity", "--checkpoint", "{MISSING}"], "argument --checkpoint"),
    (["parity", "--out", "{FILE}"], "argument --out"),
    (["parity", "--max-param-bytes", "1GiB"], "--max-param-bytes applies to --layout"),
    (["parity", "--layout", "{GOOD}", "--device", "NO_SUCH_DEVICE"], "is not a device OpenVINO reports"),
    # argparse's own errors are one line too
    (V[:2] + [], "the following arguments are required: --transform"),
    (Q + ["--bits", "5"], "argument --bits: invalid choice: 5"),
]


@pytest.mark.parametrize("argv, expected", CASES, ids=[" ".join(a) for a, _ in CASES])
def test_bad_argument_exits_2_with_one_line(argv, expected, files, no_work, capsys):
    code, err = run([a.format(**files) for a in argv], capsys)
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1, err
    assert expected in err and err.startswith("archfuzz"), err
    assert not (Path(files["DIR"]) / "q").exists()  # nothing was created either


def test_the_first_cases_of_the_issue_in_a_real_process(files):
    """Exit status and stderr as a shell sees them: one line, no traceback."""
    for argv in (["verify", files["GOOD"], "--transform", "reference:permute_heads", "--option", "seed=abc"],
                 ["fuzz", "--max-examples", "-3"], ["replay", "--root", files["FILE"]]):
        proc = subprocess.run([sys.executable, "-m", "archfuzz", *argv], capture_output=True, text=True,
                              cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
        assert proc.returncode == 2, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert proc.stdout == ""


def test_valid_arguments_still_work(files, capsys):
    """The checks do not refuse what is valid: a layout under the limit verifies (exit 0)."""
    code, err = run(["verify", files["GOOD"], "--transform", "reference:permute_heads", "--option", "seed=3",
                     "--max-param-bytes", "1MiB"], capsys)
    assert code == 0, err
    assert os.environ.get("ARCHFUZZ_MAX_PARAM_BYTES") is None  # the limit does not leak out of main()


# ------------------------------------------------------------------ layout JSON
def _valid() -> dict:
    return json.loads(build(DecoderSpec()).to_json())


def _edit(change):
    def make():
        data = _valid()
        change(data)
        return json.dumps(data).encode()
    return make


def _set(key, value):
    return _edit(lambda d: d.__setitem__(key, value))


MALFORMED = {
    "not UTF-8": (lambda: b'{"format": "archfuzz.layout/1", "meta": {"name": "\xff"}}', "not UTF-8"),
    "nested too deeply": (lambda: b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    "meta is a number": (_set("meta", 5), "'meta' must be an object"),
    "meta.features not a list": (_edit(lambda d: d["meta"].__setitem__("features", 5)), "'meta.features'"),
    "meta.name not a string": (_edit(lambda d: d["meta"].__setitem__("name", [1])), "'meta.name'"),
    "unknown top-level key": (_set("graph", {}), "unknown key(s) ['graph']"),
    "node id not a string": (_edit(lambda d: d["nodes"][0].__setitem__("id", [1])), "'id' must be a string"),
    "node op not a string": (_edit(lambda d: d["nodes"][0].__setitem__("op", {"x": 1})), "needs a string 'op'"),
    "duplicate node id": (_edit(lambda d: d["nodes"].append(dict(d["nodes"][0]))), "duplicate id"),
    "edge end not a string": (_edit(lambda d: d["edges"][0].__setitem__("source", ["embed"])),
                              "'source' and 'target' must be node id strings"),
    "edge port a string": (_edit(lambda d: d["edges"][0].__setitem__("port", "0")), "'port' must be an integer"),
    "edge with an extra key": (_edit(lambda d: d["edges"][0].__setitem__("weight", 1)), "exactly 'source'"),
    "duplicate edge": (_edit(lambda d: d["edges"].append(dict(d["edges"][0]))), "twice"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_layout_json_is_bad_input_naming_the_key(case, tmp_path, capsys):
    make, expected = MALFORMED[case]
    path = tmp_path / "layout.json"
    path.write_bytes(make())
    with pytest.raises(BadInput, match=None) as info:
        Layout.load(path)
    assert expected in str(info.value) and str(path) in str(info.value)
    code, err = run(["verify", str(path), "--transform", "reference:identity"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and expected in err, err


# ------------------------------------------------------------------ library entry points
def test_transform_options_checked_when_resolved():
    with pytest.raises(BadInput, match=r"option seed='abc' must be int"):
        resolve("reference:permute_heads", seed="abc")
    with pytest.raises(BadInput, match=r"has no option 'sed'; options: \['seed'\]"):
        resolve("reference:permute_heads", sed=1)
    with pytest.raises(BadInput, match=r"option block_size='x' must be int \| None"):
        resolve("peers:hf-bridge", block_size="x")
    with pytest.raises(BadInput, match=r"option scales='bogus' must be one of 'energy', 'random'"):
        resolve("quant:wht-scale", scales="bogus")  # a typo used to run the seeded random scales silently
    assert resolve("quant:norm-absorb", alpha=1, norms=["a"]).options == {"alpha": 1, "norms": ["a"]}


@pytest.mark.parametrize("constraints, expected", [
    ({"max_layers": 0}, "max_layers=0"), ({"moe": "maybe"}, "moe='maybe'"), ({"rope": 1}, "rope=1"),
    ({"max_experts": 1}, "max_experts=1"), ({"vocab": 1}, "vocab=1"), ({"mlp": ()}, "allows nothing"),
    ({"n_heads": (4, 8)}, "single value"), ({"rotary_dim": 4}, "exceeds head_dim 2"),
    ({"embedding_multiplier": 0.0}, "non-zero"), ({"top_k": 1}, "cannot be pinned"),
])
def test_layouts_rejects_bad_constraints_when_built(constraints, expected):
    with pytest.raises(BadInput, match=expected.replace("(", r"\(").replace(")", r"\)")):
        strategies.layouts(**constraints)


def test_size_guard_refuses_before_allocating():
    huge = build(DecoderSpec(hidden=10**9))
    assert huge.parameter_bytes(torch.float64) == 2 * huge.parameter_bytes(torch.float32)
    with pytest.raises(BadInput, match=r"over the limit of 4,294,967,296 bytes.*largest node 'embed'"):
        materialize(huge)
    small = build(DecoderSpec())
    with pytest.raises(BadInput, match=r"94,976 bytes in float64, over the limit of 1,000 bytes"):
        materialize(small, max_param_bytes=1000)
    assert small.parameter_bytes() == sum(p.numel() for p in materialize(small).parameters()) * 8
