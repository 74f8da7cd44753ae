"""The subjects of ``archfuzz parity``: a layout or a checkpoint, optionally transformed (:func:`load_subject`)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from fuzz.errors import BadInput


def load_subject(layout: str | Path | None = None, checkpoint: str | Path | None = None,
                 transform: str | None = None, options: dict | None = None, *, seq: int | None = None,
                 batch: int = 1, seed: int = 0, text: str | Path | None = None) -> tuple[nn.Module, torch.Tensor, dict]:
    """``(model, ids, description)`` for ``archfuzz parity``.

    A layout JSON is materialized (float64, weights from ``seed``) and compared on seeded random ids
    (``seq`` default 16); otherwise the checkpoint (``None``/``"default"``: SmolLM2-135M) runs on the first
    ``batch x seq`` tokens (default 128) of ``text`` (default: the offline evaluation split).  With
    ``transform`` (any ``registry:name``), the transform is applied first, in float64, to the layout's model
    or to the checkpoint imported as a GraphModel (:func:`fuzz.importer.import_model`); calibration ids
    are drawn apart from the compared ids.  A :class:`~fuzz.errors.Refusal` propagates.
    """
    from verifier import Calibration
    from verifier.registry import resolve

    gen = torch.Generator().manual_seed(seed)
    if layout is not None:
        from fuzz import Layout, materialize
        lay = Layout.load(layout)
        model = materialize(lay, seed=seed)
        vocab = lay.params(lay.source)["vocab"]
        seq = seq or 16
        ids = torch.randint(0, vocab, (batch, seq), generator=gen)
        calib = torch.randint(0, vocab, (4, seq), generator=gen)
        info = {"layout": str(layout), "layout_hash": lay.hash(), "seed": seed, "ids": "seeded random"}
    else:
        from quant.checkpoints import load_checkpoint
        from quant.quantize import text_ids
        from quant.text import calibration_windows
        model, tok = load_checkpoint(checkpoint, torch.float64 if transform else torch.float32)
        seq = seq or 128
        stream, text_info = text_ids(tok, text, "evaluation")
        if stream.numel() < batch * seq:
            raise BadInput(f"the text has {stream.numel()} tokens, fewer than {batch} x {seq}")
        ids = stream[:batch * seq].reshape(batch, seq)
        info = {"checkpoint": str(checkpoint or "default"), "text": text_info}
        if transform:
            from fuzz.importer import import_model
            calib = calibration_windows(text_ids(tok, None, "calibration")[0], 4, seq, seed)
            model = import_model(model)  # checked against the checkpoint first; its floor goes into the report
            info["import_check"] = {k: model.layout.meta["import_check"][k] for k in ("floor", "max_rel_err", "bound")}
    if transform:
        t = resolve(transform, **(options or {}))
        model = t(model, Calibration(calib, seed))
        info["transform"] = repr(t)
    return model.eval(), ids, info

