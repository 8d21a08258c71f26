"""`fastdisco eval semi --full` and label-subset lists (issue 15 item 3).

A tiny ImageNet-style tree (wnid folders, `wnid_N.JPEG` files, one unreadable file that
prepare-data skips) stands in for ImageNet; subset files in SimCLR's format (one file name per
line) are mapped to its samples through the source listing; the DisCo semi-supervised protocol
trains a linear layer on the frozen backbone with RRC + flip on the subset's images only."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fastdisco.cli.main import main as cli_main
from fastdisco.errors import FastdiscoError
from fastdisco.evaluation.subset_lists import sample_names, subset_indices

sys.path.insert(0, str(Path(__file__).parent))

WNIDS = ["n01000001", "n01000002", "n01000003"]
PER_CLASS = 6
COMMON = ["--resolution", "24", "--batch-size", "4", "--num-workers", "0", "--device", "cpu", "--no-progress"]


@pytest.fixture(scope="module")
def imagenet_like(tmp_path_factory):
    """(prepared dataset, source folder): 3 classes x 6 images; n01000002_3.JPEG is not an image."""
    from PIL import Image

    from fastdisco.dataset.prepare import prepare_dataset

    root = tmp_path_factory.mktemp("semi")
    rng = np.random.default_rng(0)
    for c, wnid in enumerate(WNIDS):
        (root / "train" / wnid).mkdir(parents=True)
        for j in range(PER_CLASS):
            path = root / "train" / wnid / f"{wnid}_{j}.JPEG"
            if (c, j) == (1, 3):
                path.write_bytes(b"not a jpeg")
                continue
            pix = np.clip(rng.normal(60 + 70 * c, 25, (24, 24, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pix).save(path, format="JPEG")
    prepare_dataset(root / "train", root / "data", workers=1)  # both formats: shards + data.beton
    return root / "data", root / "train"


def test_subset_names_map_to_their_samples(imagenet_like, tmp_path):
    data, src = imagenet_like
    names = sample_names(data)
    man = json.loads((data / "manifest.json").read_text())
    assert len(names) == man["num_samples"] == 17 and "n01000002/n01000002_3.JPEG" not in names
    lst = tmp_path / "1percent.txt"
    lst.write_text("n01000003_5.JPEG\nn01000001_0.JPEG\nn01000002_4.JPEG\n")
    # sorted folders, sorted files, the unreadable one left out: n01000002_4 is sample 6 + 3 = 9
    assert subset_indices(lst, data) == [0, 9, 16]
    lst.write_text("n01000002/n01000002_4.JPEG\n# a comment\n\n")  # a relative path works too
    assert subset_indices(lst, data) == [9]
    lst.write_text("3\n000000007.jpg\n")  # sample indices / keys, as before
    assert subset_indices(lst, data) == [3, 7]


def test_subset_errors_name_what_is_missing(imagenet_like, tmp_path):
    data, src = imagenet_like
    lst = tmp_path / "10percent.txt"
    lst.write_text("n01000001_0.JPEG\nn01000002_3.JPEG\nn09999999_1.JPEG\n")
    with pytest.raises(FastdiscoError, match=r"2 of 3 names are not in .* \(e\.g\. n01000002_3\.JPEG, n09999999_1"):
        subset_indices(lst, data)
    with pytest.raises(FastdiscoError, match="subset file not found"):
        subset_indices(tmp_path / "none.txt", data)
    other = tmp_path / "other"  # a source that is not the one prepared
    (other / "n01000001").mkdir(parents=True)
    (other / "n01000001" / "n01000001_0.JPEG").write_bytes(b"x")
    lst.write_text("n01000001_0.JPEG\n")
    with pytest.raises(FastdiscoError, match="lists other inputs than .*--subset-source"):
        subset_indices(lst, data, other)
    assert subset_indices(lst, data, src) == [0]


@pytest.mark.parametrize("backend", ["torch", "ffcv", "dali"])
def test_loader_restricted_to_a_subset_reads_only_it(imagenet_like, backend):
    from train_utils import have_backend

    from fastdisco.config import DataConfig
    from fastdisco.loader import make_loader

    if not have_backend(backend):
        pytest.skip(f"{backend} is not installed")
    data, _ = imagenet_like
    loader = make_loader(DataConfig(path=str(data), backend=backend, decode_device="cpu", recipe="linear",
                                    resolution=24, batch_size=4, num_workers=1, drop_last=False), device="cpu")
    loader.restrict_to([16, 0, 9, 3, 5])
    assert len(loader) == 2
    for epoch in range(2):
        loader.set_epoch(epoch)
        seen = [i for b in loader for i, v in zip(b.indices.tolist(), b.valid.tolist()) if v]
        assert sorted(seen) == [0, 3, 5, 9, 16]
    with pytest.raises(FastdiscoError, match=r"sample indices must be in \[0, 17\)"):
        loader.restrict_to([17])
    loader.close()


def test_semi_protocol_trains_on_the_subset_with_the_disco_schedule(imagenet_like):
    import timm

    from fastdisco.config import DataConfig
    from fastdisco.evaluation.semi import semi_protocol
    from fastdisco.loader import make_loader

    data, _ = imagenet_like
    torch.manual_seed(0)
    backbone = timm.create_model("test_resnet", pretrained=False, num_classes=0).eval()
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    cfg = dict(path=str(data), resolution=24, batch_size=4, num_workers=0, drop_last=False)
    train, val = make_loader(DataConfig(recipe="linear", **cfg)), make_loader(DataConfig(recipe="eval", **cfg))
    res = semi_protocol(backbone, train, val, {"pick": [0, 1, 6, 7, 12, 13]}, num_classes=3, epochs=4,
                        milestones=(1, 3))
    r = res["pick"]
    assert r["num_labelled"] == 6 and r["settings"]["mode"] == "disco_semi" and r["settings"]["num_val"] == 17
    assert [h["lr"] for h in r["history"]] == [3.0, 1.5, 1.5, 0.75]  # x0.5 at each milestone
    assert all(np.isfinite(h["loss"]) for h in r["history"])
    for k, v in backbone.state_dict().items():  # frozen, BN statistics included (the official sanity check)
        assert torch.equal(v, before[k]), k


def test_cli_semi_full_end_to_end(imagenet_like, tmp_path, capsys):
    from test_export import make_run

    data, _ = imagenet_like
    run, _ = make_run(tmp_path, name="test_resnet")
    lst = tmp_path / "1percent.txt"
    lst.write_text("n01000001_0.JPEG\nn01000001_1.JPEG\nn01000002_0.JPEG\nn01000003_2.JPEG\n")
    out = tmp_path / "semi_full.json"
    assert cli_main(["eval", "semi", str(run), "--full", "--subset", str(lst), "--train", str(data),
                     "--val", str(data), "--epochs", "2", "--out", str(out), *COMMON]) == 0
    rec = json.loads(out.read_text())
    r = rec["subsets"]["1percent"]
    assert rec["protocol"] == "semi_full" and r["num_labelled"] == 4 and len(r["history"]) == 2
    assert r["settings"]["lr"] == 3.0 and r["settings"]["milestones"] == [60, 80] and r["settings"]["gamma"] == 0.5
    assert "semi_full" in capsys.readouterr().out
    # the fast probe reads the same list (file names) too
    assert cli_main(["eval", "semi", str(run), "--subset", str(lst), "--train", str(data), "--val", str(data),
                     "--epochs", "2", "--out", str(out), *COMMON]) == 0
    assert json.loads(out.read_text())["subsets"]["1percent"]["num_labelled"] == 4
    # --full needs a subset list; a name that is not in the data is a one-line error
    assert cli_main(["eval", "semi", str(run), "--full", "--train", str(data), "--val", str(data), *COMMON]) == 2
    assert "give --subset FILE" in capsys.readouterr().err
    assert cli_main(["eval", "semi", str(run), "--full", "--subset", str(lst), "--train", str(data),
                     "--holdout", "0.2", *COMMON]) == 2
    assert "--full needs --val" in capsys.readouterr().err
    lst.write_text("n01000001_0.JPEG\nn07777777_1.JPEG\n")
    assert cli_main(["eval", "semi", str(run), "--full", "--subset", str(lst), "--train", str(data),
                     "--val", str(data), *COMMON]) == 1
    err = capsys.readouterr().err.strip()
    assert "1 of 2 names are not in" in err and len(err.splitlines()) == 1
