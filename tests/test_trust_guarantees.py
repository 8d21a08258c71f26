"""Guarantees the README's "What fastdisco guarantees" section states that no other test pins down:
an interrupted checkpoint save keeps the previous one, and prepare-data never writes into a
non-empty folder that is not a prepared dataset."""
from pathlib import Path

import pytest
import torch
from PIL import Image

from fastdisco.errors import FastdiscoError


def test_interrupted_checkpoint_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    from fastdisco.engine.checkpoint import FORMAT, CheckpointManager

    ckpt = CheckpointManager(tmp_path / "run")
    ckpt.save({"format": FORMAT, "step": 1, "w": torch.ones(3)}, 1)
    real_save = torch.save

    def dies_half_way(obj, f, *a, **kw):  # a kill in the middle of writing step 2
        f.write(b"PK\x03\x04 partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save({"format": FORMAT, "step": 2, "w": torch.zeros(3)}, 2)
    monkeypatch.setattr(torch, "save", real_save)
    state = ckpt.load()
    assert state["step"] == 1 and torch.equal(state["w"], torch.ones(3))
    assert sorted(p.name for p in ckpt.dir.iterdir()) == ["last.pt", "step_00000001.pt"]  # no partial file


def test_prepare_data_refuses_a_non_empty_folder_it_did_not_write(tmp_path):
    from fastdisco.dataset.prepare import prepare_dataset

    (tmp_path / "src").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "src" / "a.png")
    out = tmp_path / "out"
    out.mkdir()
    (out / "thesis.tex").write_text("mine")
    with pytest.raises(FastdiscoError, match="non-empty folder that is not a prepared dataset"):
        prepare_dataset(tmp_path / "src", out, formats="dali", workers=1)
    assert sorted(p.name for p in out.iterdir()) == ["thesis.tex"] and (out / "thesis.tex").read_text() == "mine"
