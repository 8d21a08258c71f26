"""fastdisco.evaluation: probes and kNN on synthetic features with known answers, kNN against a
brute-force reference, seeded class-balanced subsets, the DisCo linear protocol for a few epochs,
SSLD agreement, teacher reference loading, and `fastdisco eval` end to end and its errors."""
from __future__ import annotations

import json
import math
from types import SimpleNamespace

import fastdisco  # noqa: F401  (torchvision import fix before timm)
import pytest
import timm
import torch
from torch import nn

from fastdisco.cli.main import main as cli_main
from fastdisco.errors import FastdiscoError
from fastdisco.evaluation import (balanced_subset, extract_features, knn_eval, linear_probe_fast,
                                  linear_probe_protocol, load_backbone, read_subset_file, semi_eval,
                                  ssld_eval, topk_accuracy)
from fastdisco.evaluation.knn import knn_predict

C, D = 10, 32


def blobs(n: int, separable: bool, seed: int):
    """Features: class means far apart (separable) or pure noise (labels carry no signal).
    Scaled and shifted so that the probe's standardisation has work to do."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, C, (n,), generator=g)
    centers = torch.randn(C, D, generator=torch.Generator().manual_seed(99)) * 4
    x = torch.randn(n, D, generator=g) + (centers[y] if separable else 0)
    return x * 5 + 2, y


# --------------------------------------------------------------------------- metrics
def test_topk_accuracy_known_values():
    logits = torch.tensor([[9., 1, 2, 3, 4, 5, 6], [0., 1, 2, 3, 4, 5, 6], [6., 5, 4, 3, 2, 1, 0]])
    labels = torch.tensor([0, 1, 6])  # hit at rank 1; rank 6 (miss in top-5); rank 7 (miss)
    acc = topk_accuracy(logits, labels)
    assert acc["top1"] == pytest.approx(100 / 3) and acc["top5"] == pytest.approx(100 / 3)
    labels = torch.tensor([0, 3, 0])
    acc = topk_accuracy(logits, labels)
    assert acc["top1"] == pytest.approx(200 / 3) and acc["top5"] == pytest.approx(100.0)


# --------------------------------------------------------------------------- fast linear probe
@pytest.mark.parametrize("optimizer", ["adamw", "sgd", "lbfgs"])
def test_linear_fast_separable_and_random(optimizer):
    xt, yt = blobs(600, True, 0)
    xv, yv = blobs(400, True, 1)
    epochs = 20 if optimizer != "lbfgs" else 50
    r = linear_probe_fast(xt, yt, xv, yv, optimizer=optimizer, epochs=epochs, batch_size=200)
    assert r["top1"] >= 99.0 and r["top5"] == 100.0
    # Random features: train accuracy can be fitted, val stays at chance (10% +- ~5 sigma).
    rt, rv = blobs(600, False, 2), blobs(400, False, 3)
    r = linear_probe_fast(rt[0], rt[1], rv[0], rv[1], optimizer=optimizer, epochs=epochs, batch_size=200)
    assert abs(r["top1"] - 10.0) < 8.0 and abs(r["top5"] - 50.0) < 13.0
    assert r["settings"]["optimizer"] == optimizer and r["settings"]["num_classes"] == C


def test_linear_fast_seeded_and_standardisation_scale_free():
    xt, yt = blobs(300, False, 0)
    xv, yv = blobs(200, False, 1)
    a = linear_probe_fast(xt, yt, xv, yv, epochs=5, seed=3)
    b = linear_probe_fast(xt, yt, xv, yv, epochs=5, seed=3)
    assert a["top1"] == b["top1"] and a["train_top1"] == b["train_top1"]
    # Standardised features: a global rescale of the features changes nothing.
    c = linear_probe_fast(xt * 1000, yt, xv * 1000, yv, epochs=5, seed=3)
    assert c["top1"] == pytest.approx(a["top1"], abs=0.5)


# --------------------------------------------------------------------------- kNN
def knn_reference(xt, yt, xv, k, T, num_classes):
    """One test sample at a time, straight from the definition."""
    xt = xt / xt.norm(dim=1, keepdim=True)
    out = []
    for v in xv:
        sim = xt @ (v / v.norm())
        top = sim.argsort(descending=True)[:k]
        scores = torch.zeros(num_classes)
        for i in top:
            scores[yt[i]] += math.exp(sim[i].item() / T)
        out.append(scores)
    return torch.stack(out)


def test_knn_matches_reference_with_chunking():
    xt, yt = blobs(120, False, 0)
    xv, _ = blobs(17, False, 1)
    want = knn_reference(xt.double(), yt, xv.double(), k=7, T=0.5, num_classes=C)
    got = knn_predict(xt, yt, xv, num_classes=C, k=7, temperature=0.5, max_elements=250)  # 2 rows per chunk
    torch.testing.assert_close(got, want.float(), rtol=1e-4, atol=1e-5)


def test_knn_separable_and_random():
    xt, yt = blobs(500, True, 0)
    xv, yv = blobs(300, True, 1)
    r = knn_eval(xt, yt, xv, yv, max_elements=10_000)
    assert r["top1"] >= 99.0 and r["settings"]["k"] == 200 and r["settings"]["temperature"] == 0.07
    rt, rv = blobs(500, False, 2), blobs(300, False, 3)
    r = knn_eval(rt[0], rt[1], rv[0], rv[1])
    assert abs(r["top1"] - 10.0) < 9.0
    # k larger than the train set is capped.
    assert knn_eval(xt[:5], yt[:5], xv, yv)["settings"]["k"] == 5


# --------------------------------------------------------------------------- semi
def test_balanced_subset_is_balanced_and_seeded():
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate([100, 50, 7, 300])] + [torch.full((20,), -1)])
    labels = labels[torch.randperm(labels.numel(), generator=torch.Generator().manual_seed(0))]
    pos = balanced_subset(labels, 0.1, seed=1)
    counts = torch.bincount(labels[pos], minlength=4).tolist()
    assert counts == [10, 5, 1, 30]            # round(10%), at least one per class
    assert (labels[pos] >= 0).all() and pos.unique().numel() == pos.numel()
    assert torch.equal(pos, balanced_subset(labels, 0.1, seed=1))
    assert not torch.equal(pos, balanced_subset(labels, 0.1, seed=2))
    assert torch.bincount(labels[balanced_subset(labels, 0.01, seed=0)], minlength=4).tolist() == [1, 1, 1, 3]


def test_read_subset_file(tmp_path):
    f = tmp_path / "one.txt"
    f.write_text("# header\n3\n000000012\n000000005.jpg  # key with extension\n\n")
    assert read_subset_file(f) == [3, 12, 5]
    f.write_text("n01440764_10026.JPEG\n")
    with pytest.raises(FastdiscoError, match="one.txt:1"):
        read_subset_file(f)
    with pytest.raises(FastdiscoError, match="not found"):
        read_subset_file(tmp_path / "missing.txt")


def test_semi_eval_fractions_and_given_subsets():
    xt, yt = blobs(1000, True, 0)
    xv, yv = blobs(200, True, 1)
    res = semi_eval(xt, yt, xv, yv, fractions=(0.02, 0.1), epochs=30)
    assert set(res) == {"2%", "10%"}
    assert res["10%"]["num_labelled"] == sum(max(1, round(0.1 * int(n))) for n in torch.bincount(yt))
    assert res["10%"]["top1"] >= 97.0
    res = semi_eval(xt, yt, xv, yv, subsets={"mine": torch.arange(50)}, epochs=5)
    assert res["mine"]["num_labelled"] == 50
    # Two rows per sample (an augmented pass): fractions are drawn over samples, all rows kept.
    idx = torch.arange(1000).repeat(2)
    res = semi_eval(torch.cat([xt, xt]), yt.repeat(2), xv, yv, fractions=(0.1,), train_indices=idx, epochs=2)
    n = sum(max(1, round(0.1 * int(n))) for n in torch.bincount(yt))
    assert res["10%"]["num_labelled"] == n and res["10%"]["settings"]["num_train"] == 2 * n


# --------------------------------------------------------------------------- features and protocol
def _image_batches(n: int, seed: int, batch: int, pad: int = 0):
    """Tiny images whose colour encodes the class; as loader-contract batches with `valid`."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 4
    colours = torch.tensor([[1., -1, -1], [-1, 1, -1], [-1, -1, 1], [1, 1, -1]])
    x = colours[y][:, :, None, None] + 0.3 * torch.randn(n, 3, 16, 16, generator=g)
    out = []
    for i in range(0, n, batch):
        xb, yb = x[i:i + batch], y[i:i + batch]
        valid = torch.ones(len(yb), dtype=torch.bool)
        if i + batch >= n and pad:  # wrap-around padding as the loader does, flagged invalid
            xb, yb = torch.cat([xb, x[:pad]]), torch.cat([yb, (y[:pad] + 1) % 4])
            valid = torch.cat([valid, torch.zeros(pad, dtype=torch.bool)])
        out.append(SimpleNamespace(views=[xb], labels=yb, indices=torch.arange(i, i + len(yb)), valid=valid))
    return out


def _tiny_backbone():
    torch.manual_seed(0)
    m = timm.create_model("test_resnet", num_classes=0)
    with torch.no_grad():  # non-trivial running stats
        m.train()(torch.randn(8, 3, 16, 16))
    return m.eval()


def test_extract_features_drops_padding_and_matches_direct_forward():
    m = _tiny_backbone()
    batches = _image_batches(20, 0, 8, pad=4)
    feats, labels, idx = extract_features(m, batches, return_indices=True)
    assert feats.shape == (20, m.num_features) and torch.equal(idx, torch.arange(20))
    x = torch.cat([b.views[0][b.valid] for b in batches])
    with torch.no_grad():
        torch.testing.assert_close(feats, m(x))
    assert torch.equal(labels, torch.arange(20) % 4)
    # A model with a classifier gives its pre-logits features, not logits.
    clf = timm.create_model("test_resnet", num_classes=5).eval()
    f, _ = extract_features(clf, batches[:1])
    assert f.shape == (8, clf.num_features)


class _EpochLoader(list):
    def __init__(self, batches):
        super().__init__(batches)
        self.epochs = []

    def set_epoch(self, e):
        self.epochs.append(e)


def test_linear_protocol_few_epochs():
    m = _tiny_backbone()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    train = _EpochLoader(_image_batches(64, 0, 16, pad=8))
    val = _image_batches(32, 1, 16)
    res = linear_probe_protocol(m, train, val, num_classes=4, epochs=4, milestones=(2, 3))
    assert train.epochs == [0, 1, 2, 3]
    assert [h["lr"] for h in res["history"]] == [3.0, 3.0, 1.5, 0.75]
    assert all(math.isfinite(h["loss"]) for h in res["history"])
    assert res["history"][-1]["loss"] < res["history"][0]["loss"]
    assert res["top1"] >= 90.0 and res["settings"]["momentum"] == 0.9
    # Frozen and in eval mode: weights and BN running statistics untouched.
    for k, v in m.state_dict().items():
        assert torch.equal(v, before[k]), k


# --------------------------------------------------------------------------- ssld
class _Fixed(nn.Module):
    def __init__(self, w):
        super().__init__()
        self.w = nn.Parameter(w)
        self.num_classes = w.shape[1]

    def forward(self, x):
        return x.flatten(1)[:, :self.w.shape[0]] @ self.w


def test_ssld_eval_top1_and_agreement():
    w = torch.randn(12, 5, generator=torch.Generator().manual_seed(0))
    student = _Fixed(w)
    x = torch.randn(30, 3, 2, 2)
    pred = student(x).argmax(1).detach()
    labels = pred.clone()
    labels[:10] = -1                     # unlabelled rows: counted for agreement only
    labels[10:15] = (pred[10:15] + 1) % 5  # 5 wrong of 20 labelled
    loader = [(x[:16], labels[:16]), (x[16:], labels[16:])]
    r = ssld_eval(student, loader, teacher=_Fixed(w.clone()))
    assert r["num_labelled"] == 20 and r["top1"] == pytest.approx(75.0) and r["agreement_top1"] == 100.0
    r = ssld_eval(student, loader, teacher=_Fixed(-w))  # reversed ranking: never the same top-1
    assert r["agreement_top1"] == 0.0
    assert ssld_eval(student, [(x, torch.full((30,), -1))])["top1"] is None


# --------------------------------------------------------------------------- loading
def test_teacher_reference_row_is_pooled_backbone(tmp_path):
    ref = _tiny_backbone()
    ckpt = tmp_path / "teacher.pth"
    torch.save(ref.state_dict(), ckpt)
    lb = load_backbone(ckpt, model="test_resnet", fmt="teacher")
    x = torch.randn(2, 3, 16, 16)
    # The teacher re-normalises the loader's ImageNet-normalised input to its own timm cfg (0.5/0.5).
    in_mean, in_std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    x_own = (x * in_std[:, None, None] + in_mean[:, None, None] - 0.5) / 0.5
    with torch.no_grad():
        torch.testing.assert_close(lb.module(x), ref(x_own))
    assert lb.num_classes == 0 and lb.kind == "teacher"
    # The same file as a plain timm state dict: no re-normalisation.
    lb = load_backbone(ckpt, model="test_resnet", fmt="timm")
    with torch.no_grad():
        assert torch.equal(lb.module(x), ref(x))


def test_load_backbone_strict_error_lists_keys(tmp_path):
    sd = _tiny_backbone().state_dict()
    sd.pop("conv1.0.weight")
    torch.save(sd, tmp_path / "bad.pth")
    with pytest.raises(FastdiscoError, match="1 missing.*conv1.0.weight"):
        load_backbone(tmp_path / "bad.pth", model="test_resnet")


# --------------------------------------------------------------------------- CLI
@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    from fastdisco.dataset.prepare import prepare_dataset
    from fastdisco.dataset.recipes.synthetic import write_synthetic_folder

    root = tmp_path_factory.mktemp("evaldata")
    write_synthetic_folder(root / "src", num_classes=3, per_class=8, size=24, ext="jpg")
    prepare_dataset(root / "src", root / "out", formats="dali", workers=1, shard_size=64)
    return root / "out"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from test_export import make_run

    run, _ = make_run(tmp_path_factory.mktemp("evalrun"), name="test_resnet")
    return run


COMMON = ["--resolution", "24", "--batch-size", "8", "--num-workers", "0", "--device", "cpu", "--no-progress"]


def test_cli_knn_and_linear_end_to_end(prepared, run_dir, capsys):
    # kNN with k=1 and val == train: every sample's nearest neighbour is itself -> exactly 100%.
    assert cli_main(["eval", "knn", str(run_dir), "--train", str(prepared), "--val", str(prepared),
                     "--k", "1", *COMMON]) == 0
    rec = json.loads((run_dir / "eval" / "knn.json").read_text())
    assert rec["top1"] == 100.0 and rec["settings"]["num_train"] == 24 and rec["settings"]["num_val"] == 24
    assert rec["model"]["name"] == "test_resnet" and rec["model"]["step"] == 7
    assert "command" in rec and "provenance" in rec and rec["data"]["backend"] == "torch"
    # The exported backbone (safetensors + sidecar: model name from the JSON) evaluates the same way.
    from fastdisco.export import export_backbone

    export_backbone(run_dir, run_dir / "export" / "s.safetensors")
    assert cli_main(["eval", "knn", str(run_dir / "export" / "s.safetensors"), "--train", str(prepared),
                     "--val", str(prepared), "--k", "1", *COMMON]) == 0
    rec2 = json.loads((run_dir / "export" / "eval" / "s_knn.json").read_text())
    assert rec2["model"]["kind"] == "safetensors" and rec2["top1"] == 100.0
    out = run_dir / "lin.json"
    assert cli_main(["eval", "linear", str(run_dir / "checkpoints" / "last.pt"), "--train", str(prepared),
                     "--holdout", "0.25", "--epochs", "3", "--out", str(out), *COMMON]) == 0
    rec = json.loads(out.read_text())
    assert rec["protocol"] == "linear_fast" and rec["settings"]["num_val"] == 6 and rec["settings"]["num_train"] == 18
    assert 0.0 <= rec["top1"] <= 100.0 and rec["top5"] == 100.0  # 3 classes: top-5 is everything
    assert "linear_fast" in capsys.readouterr().out


def test_cli_linear_full_protocol_two_epochs(prepared, run_dir):
    out = run_dir / "full.json"
    assert cli_main(["eval", "linear", str(run_dir), "--full", "--train", str(prepared), "--val", str(prepared),
                     "--epochs", "2", "--out", str(out), *COMMON]) == 0
    rec = json.loads(out.read_text())
    assert rec["protocol"] == "linear" and len(rec["history"]) == 2 and rec["settings"]["lr"] == 3.0
    assert rec["settings"]["num_val"] == 24


def _manifest(path, labeled=True):
    path.mkdir(parents=True, exist_ok=True)
    (path / "manifest.json").write_text(json.dumps({"format_version": 1, "num_samples": 4, "num_classes": 2,
                                                    "labeled": labeled}))
    return path


def test_cli_errors_are_one_line(tmp_path, run_dir, capsys):
    lab, unl = _manifest(tmp_path / "lab"), _manifest(tmp_path / "unl", labeled=False)
    # exit 1: a runtime error (files, data, checkpoints); exit 2: a usage error (the command line)
    cases = [
        (["knn", str(tmp_path / "nope.pt"), "--train", str(lab), "--val", str(lab)], "checkpoint not found", 1),
        (["knn", str(tmp_path), "--train", str(lab), "--val", str(lab)], "no checkpoint in run directory", 1),
        (["knn", str(run_dir), "--train", str(unl), "--val", str(lab)], "is unlabeled", 1),
        (["linear", str(run_dir), "--train", str(lab), "--val", str(tmp_path)], "not a prepared dataset", 1),
        (["knn", str(run_dir), "--train", str(lab)], "give --val DATA, or --holdout", 2),
        (["linear", str(run_dir), "--train", str(lab), "--holdout", "0.2", "--full"], "--full needs --val", 2),
        (["ssld", str(run_dir), "--val", str(lab)], "has no classifier", 1),
    ]
    for argv, msg, code in cases:
        assert cli_main(["eval", *argv, "--device", "cpu"]) == code, argv
        err = capsys.readouterr().err.strip()
        assert msg in err and len(err.splitlines()) == 1, (argv, err)


def test_cli_semi_and_ssld_end_to_end(prepared, tmp_path):
    from test_export import make_run

    run, _ = make_run(tmp_path, name="test_resnet", num_classes=3, method="ssld")
    subset = tmp_path / "pick.txt"
    subset.write_text("0\n1\n8\n9\n16\n17\n")
    out = tmp_path / "semi.json"
    assert cli_main(["eval", "semi", str(run), "--train", str(prepared), "--val", str(prepared), "--epochs", "2",
                     "--subset-file", str(subset), "--out", str(out), *COMMON]) == 0
    rec = json.loads(out.read_text())
    assert rec["subsets"]["pick"]["num_labelled"] == 6
    assert cli_main(["eval", "semi", str(run), "--train", str(prepared), "--holdout", "0.25", "--epochs", "2",
                     "--fractions", "0.5", "--aug-passes", "1", "--out", str(out), *COMMON]) == 0
    rec = json.loads(out.read_text())
    # Half of the 18 non-held-out samples (3 per class), drawn over samples, not over the 36 rows
    # that the augmented pass doubles.
    assert rec["subsets"]["50%"]["num_labelled"] == 9 and rec["subsets"]["50%"]["settings"]["num_train"] == 18
    # SSLD: the student against itself as teacher (a fastdisco checkpoint) agrees on every sample.
    assert cli_main(["eval", "ssld", str(run), "--val", str(prepared), "--teacher", "test_resnet",
                     "--teacher-ckpt", str(run / "checkpoints" / "last.pt"), *COMMON]) == 0
    rec = json.loads((run / "eval" / "ssld.json").read_text())
    assert rec["agreement_top1"] == 100.0 and rec["num_samples"] == 24 and rec["num_labelled"] == 24
    assert 0.0 <= rec["top1"] <= 100.0


# --------------------------------------------------------------------------- baselines (issue 14)
def test_raw_pixels_features_are_the_flattened_images():
    from fastdisco.evaluation import RawPixels

    batches = _image_batches(24, seed=0, batch=8)
    f, y = extract_features(RawPixels(), batches, device="cpu")
    torch.testing.assert_close(f, torch.cat([b.views[0] for b in batches]).flatten(1))
    # the colour-coded images are separable by their pixels: a raw-pixel kNN gets them all
    fv, yv = extract_features(RawPixels(), _image_batches(24, seed=1, batch=8), device="cpu")
    assert knn_eval(f, y, fv, yv, k=5)["top1"] == 100.0


def test_random_init_is_seeded_and_bn_recalibration_estimates_the_data_statistics():
    from fastdisco.evaluation import random_init_backbone, recalibrate_bn

    state = torch.random.get_rng_state()
    a, b, c = (random_init_backbone("test_resnet", seed=s) for s in (3, 3, 4))
    assert torch.equal(torch.random.get_rng_state(), state)  # the global RNG is left alone
    wa, wb, wc = (m.state_dict()["conv1.0.weight"] for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)
    # recalibrated running mean/var of the first BN = the exact mean/var of its inputs over all data
    batches = _image_batches(32, seed=0, batch=8)
    seen = recalibrate_bn(a, batches, device="cpu")
    assert seen == 32 and not a.training
    x = torch.cat([bt.views[0] for bt in batches])
    with torch.no_grad():
        h = a.conv1[0](x)
    bn = a.conv1[1]
    per_batch = h.view(4, 8, *h.shape[1:])
    torch.testing.assert_close(bn.running_mean, h.mean((0, 2, 3)), atol=1e-5, rtol=1e-4)
    want_var = torch.stack([p.var((0, 2, 3), unbiased=True) for p in per_batch]).mean(0)
    torch.testing.assert_close(bn.running_var, want_var, atol=1e-5, rtol=1e-4)
    assert bn.momentum == 0.1  # restored


def test_cli_baselines_end_to_end(prepared, tmp_path):
    out = tmp_path / "baselines"
    assert cli_main(["eval", "knn", str(out / "raw"), "--format", "raw_pixels", "--train", str(prepared),
                     "--val", str(prepared), "--k", "1", *COMMON]) == 0
    rec = json.loads((out / "raw" / "eval" / "knn.json").read_text())
    assert rec["top1"] == 100.0 and rec["settings"]["feature_dim"] == 3 * 24 * 24
    assert cli_main(["eval", "knn", str(out / "rand"), "--format", "random_init", "--model", "test_resnet",
                     "--train", str(prepared), "--val", str(prepared), "--k", "1", *COMMON]) == 0
    rec = json.loads((out / "rand" / "eval" / "knn.json").read_text())
    assert rec["model"]["kind"] == "random_init" and rec["model"]["bn_recalibrated_on"] == 24

def test_cli_random_init_needs_model(prepared, tmp_path, capsys):
    assert cli_main(["eval", "knn", str(tmp_path / "x"), "--format", "random_init", "--train", str(prepared),
                     "--val", str(prepared), *COMMON]) != 0
    assert "needs --model" in capsys.readouterr().err


def test_mean_pairwise_cosine_matches_brute_force_and_detects_collapse():
    from fastdisco.evaluation import mean_pairwise_cosine

    x = torch.randn(50, 8, generator=torch.Generator().manual_seed(0)) * 3
    z = torch.nn.functional.normalize(x, dim=1)
    sim = z @ z.T
    brute = (sim.sum() - sim.diag().sum()) / (50 * 49)
    assert abs(mean_pairwise_cosine(x) - float(brute)) < 1e-6
    collapsed = torch.ones(20, 8) + 0.01 * torch.randn(20, 8)
    assert mean_pairwise_cosine(collapsed) > 0.99 and abs(mean_pairwise_cosine(torch.randn(2000, 64))) < 0.05


def test_cli_knn_several_k_in_one_pass(prepared, run_dir, tmp_path):
    out = tmp_path / "knn.json"
    assert cli_main(["eval", "knn", str(run_dir), "--train", str(prepared), "--val", str(prepared),
                     "--k", "1", "5", "--out", str(out), *COMMON]) == 0
    rec = json.loads(out.read_text())
    assert set(rec["by_k"]) == {"1", "5"} and rec["by_k"]["1"]["top1"] == 100.0 == rec["top1"]
    assert rec["settings"]["k"] == 1 and -1.0 <= rec["val_mean_cosine"] <= 1.0
