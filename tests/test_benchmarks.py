"""benchmarks/throughput.py and benchmarks/report.py on this CPU: every mode for a couple of
steps on tiny models and tiny prepared data, the JSON rows they append (fields, positive
numbers, provenance), the README report built from them, and that the benchmark's training step
is the engine's (same weights after one step as fastdisco.engine.trainer)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(Path(__file__).resolve().parent))

TINY = ["--batch", "8", "--resolution", "32", "--teacher", "test_resnet", "--student", "test_resnet",
        "--workers", "1", "--steps", "2", "--warmup", "1", "--precision", "fp32", "--device", "cpu",
        "--set", "method.queue_size=64", "--set", "model.proj_hidden=64", "--set", "model.shuffle_bn_group=4",
        "--set", "model.teacher_proj_hidden=64", "--repeats", "2", "--epochs", "1"]
STEP_FIELDS = ("mode", "impl", "method", "teacher", "student", "resolution", "batch", "precision", "compile",
               "loss_impl", "channels_last", "device", "timer", "warmup", "steps", "run_id", "note",
               "images_per_s", "step_ms_mean", "step_ms_median", "peak_mem_mib", "provenance")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """32 tiny class-folder JPEGs and their prepared dataset (webdataset + DALI index only)."""
    from fastdisco.dataset.prepare import prepare_dataset
    from fastdisco.dataset.recipes.synthetic import write_synthetic_folder

    root = tmp_path_factory.mktemp("bench")
    src = write_synthetic_folder(root / "src", num_classes=2, per_class=16, size=48, ext="jpg")
    prepare_dataset(src, root / "prepared", formats="dali", max_side=64, workers=1)
    return src, root / "prepared"


def _run(argv: list[str]) -> int:
    import throughput

    return throughput.main(argv)


def _rows(results: Path) -> list[dict]:
    return [json.loads(line) for line in (results / "throughput.jsonl").read_text().splitlines()]


def _check_provenance(row: dict) -> None:
    prov = row["provenance"]
    assert prov["date"] and prov["versions"]["torch"] and prov["device"]["cpu_count"] >= 1
    assert "commit" in prov["git"] and prov["device"]["device"].startswith("cpu")


@pytest.fixture(scope="module")
def all_results(data, tmp_path_factory):
    """One `--mode all` invocation: loader (torch, dali, official), model and step, with baselines."""
    src, prepared = data
    res = tmp_path_factory.mktemp("all") / "results"
    rc = _run(["--mode", "all", "--data", str(prepared), "--src", str(src), "--backends", "torch,dali",
               "--backend", "torch", "--results-dir", str(res), *TINY])
    assert rc == 0
    return res


def test_all_modes_write_rows(all_results):
    rows = _rows(all_results)
    loaders = {r["backend"]: r for r in rows if r["mode"] == "loader"}
    assert set(loaders) == {"torch", "dali", "official_disco_torchvision"}
    for r in loaders.values():
        assert r["images_per_s"] > 0 and r["images"] > 0
        _check_provenance(r)
    assert loaders["torch"]["vs_official"] > 0
    for r in loaders.values():  # the median of 2 rotated rounds
        assert len(r["rounds_images_per_s"]) == 2 and r["repeats"] == 2
        lo, hi = sorted(r["rounds_images_per_s"])
        assert lo <= r["images_per_s"] <= hi
    t, o = loaders["torch"]["rounds_images_per_s"], loaders["official_disco_torchvision"]["rounds_images_per_s"]
    assert loaders["torch"]["vs_official_min_round"] == round(min(a / b for a, b in zip(t, o)), 2)
    steps = {(r["mode"], r["impl"]): r for r in rows if r["mode"] != "loader"}
    assert set(steps) == {("model", "fastdisco"), ("step", "fastdisco"), ("model", "baseline"), ("step", "baseline")}
    for r in steps.values():
        for f in STEP_FIELDS:
            assert f in r, f
        assert r["images_per_s"] > 0 and r["step_ms_mean"] > 0 and r["step_ms_median"] > 0
        assert r["timer"] == "wall" and "CPU" in r["note"] and r["peak_mem_mib"] is None  # CPU rows say so
        assert r["loss_kernel"] == "torch"  # no fused kernels without CUDA
        _check_provenance(r)
    assert len({r["run_id"] for r in rows}) == 1  # one invocation: the ratios are side by side
    fd_step, base_step = steps[("step", "fastdisco")], steps[("step", "baseline")]
    assert fd_step["backend"] == "torch" and base_step["backend"] == "official_disco_torchvision"
    assert fd_step["vs_baseline"] == pytest.approx(fd_step["images_per_s"] / base_step["images_per_s"], rel=1e-2)
    assert fd_step["vs_model"] == pytest.approx(fd_step["images_per_s"] / steps[("model", "fastdisco")]["images_per_s"],
                                                rel=1e-2)
    # the baseline runs as the official code: fp32 eager, contiguous, reference losses, unfused SGD
    for r in (base_step, steps[("model", "baseline")]):
        assert (r["precision"], r["compile"], r["channels_last"], r["loss_impl"], r["fused_optim"]) == \
            ("fp32", False, False, "torch", False)


def test_baseline_mode_with_breakdown_flops_profile(data, tmp_path):
    src, _ = data
    res, traces = tmp_path / "results", tmp_path / "traces"
    rc = _run(["--mode", "baseline", "--src", str(src), "--breakdown", "--flops", "--profile", str(traces),
               "--results-dir", str(res), *TINY])
    assert rc == 0
    (row,) = _rows(res)
    assert (row["mode"], row["impl"], row["method"]) == ("step", "baseline", "disco")
    parts = row["breakdown_ms"]
    assert set(parts) == {"teacher", "student_fwd_bwd", "momentum_encoder", "loss", "optimizer", "loading"}
    assert all(v > 0 for v in parts.values())
    assert sum(row["breakdown_share"].values()) == pytest.approx(1.0, abs=1e-3)
    assert row["gflop_per_step"] > 0 and row["tflops_achieved"] > 0 and row["peak_share"] is None  # no GPU peak
    assert Path(row["profile_trace"]).is_file() and row["profile_top"][0]["self_ms"] > 0
    assert (traces / ".gitignore").read_text().strip() == "*"


def test_model_mode_ssld_without_baseline(tmp_path):
    res = tmp_path / "results"
    rc = _run(["--mode", "model", "--method", "ssld", "--no-baseline", "--results-dir", str(res), *TINY,
               "--set", "model.num_classes=10"])
    assert rc == 0
    (row,) = _rows(res)
    assert (row["mode"], row["impl"], row["method"], row["backend"]) == ("model", "fastdisco", "ssld", None)
    assert row["images_per_s"] > 0 and "vs_baseline" not in row


def test_flop_count_matches_analytic_linear_model():
    """count_flops on a student whose only FLOPs are one Linear: 2*N*in*out forward and the same
    again backward for the weight gradient (the input, like an image batch, needs no gradient)."""
    from bench_step import count_flops

    class Stub:
        pass

    lin = torch.nn.Linear(16, 4)
    m = Stub()
    m.student, m.run_student = lin, lin
    m.step = lambda batch: (m.run_student(batch).sum(), {})
    s = Stub()
    s.method, s.optimizer = m, torch.optim.SGD(lin.parameters(), lr=0.1)
    s.autocast = lambda: torch.autocast("cpu", enabled=False)
    assert count_flops(s, torch.randn(8, 16)) == 2 * (2 * 8 * 16 * 4)


def test_flop_count_of_grouped_and_depthwise_convs_matches_a_hand_count():
    """A stem conv, a depthwise 3x3 and a grouped 1x1 (groups=4), counted by count_flops against
    2 * N * H * W * C_out * (C_in / groups) * k * k per pass: forward once, the weight gradient
    once, and the input gradient once where the input needs one (not for the image batch)."""
    from torch.utils.flop_counter import FlopCounterMode

    from bench_step import count_flops

    class Stub:
        pass

    n, h, w = 2, 16, 16
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1, bias=False),
                              torch.nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False),
                              torch.nn.Conv2d(8, 16, 1, groups=4, bias=False))
    m = Stub()
    m.student, m.run_student = net, net
    m.step = lambda batch: (m.run_student(batch).sum(), {})
    s = Stub()
    s.method, s.optimizer = m, torch.optim.SGD(net.parameters(), lr=0.1)
    s.autocast = lambda: torch.autocast("cpu", enabled=False)
    x = torch.randn(n, 3, h, w)
    stem = 2 * n * h * w * 8 * 3 * 9
    depthwise = 2 * n * h * w * 8 * 1 * 9
    grouped = 2 * n * h * w * 16 * 2 * 1
    assert count_flops(s, x) == 2 * stem + 3 * depthwise + 3 * grouped
    with FlopCounterMode(display=False) as plain:  # torch's own count: the weight gradient ignores groups
        net(x).sum().backward()
    assert plain.get_total_flops() > count_flops(s, x) + 5 * depthwise


def test_peak_table():
    from bench_step import peak_bf16_tflops

    assert peak_bf16_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert peak_bf16_tflops("NVIDIA H100 PCIe") == 756.0
    assert peak_bf16_tflops("NVIDIA H200") == 989.0
    assert peak_bf16_tflops("cpu") is None


def test_bench_step_is_the_engine_step(tmp_path):
    """One benchmark train_step == one optimizer step of fastdisco.engine.trainer (same init, same batch)."""
    from bench_step import build_setup, train_step
    from train_utils import TinyLoader, TinyTeacher, tiny_cfg

    from fastdisco.engine.trainer import train

    cfg = tiny_cfg(tmp_path, "disco", train={"max_steps": 1, "ckpt_every": 1})
    train(cfg, loader=TinyLoader(), teacher=TinyTeacher())
    engine = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)["student"]

    setup = build_setup(cfg, torch.device("cpu"), teacher=TinyTeacher())
    loader = TinyLoader()
    loader.set_epoch(0)
    before = {k: v.clone() for k, v in setup.method.student.state_dict().items()}
    train_step(setup, next(iter(loader)))
    after = setup.method.student.state_dict()
    moved = [k for k in after if after[k].is_floating_point() and not torch.equal(after[k], before[k])]
    assert moved  # the step changed the weights ...
    for k, v in after.items():  # ... exactly as the engine's step did
        torch.testing.assert_close(v, engine[k], msg=k)


def test_step_mode_needs_data():
    with pytest.raises(SystemExit):
        _run(["--mode", "step", "--no-save"])


def test_report_builds_readme_with_tables(all_results, tmp_path):
    """report.py over throughput rows (written by throughput.py) plus loss and prepare rows."""
    import shutil

    import report
    from results_io import append_rows

    res = tmp_path / "results"
    shutil.copytree(all_results, res)

    append_rows("losses", [{"bench": "losses", "loss": "infonce", "N": 64, "D": 32, "K": 512, "impl": "torch",
                            "dtype": "float32", "device": "cpu", "timer": "wall", "fwd_ms": 1.0, "bwd_ms": 2.0,
                            "fwd_bwd_ms": 3.0, "peak_extra_mib": None}], res)
    append_rows("prepare", [{"images": 300, "size": "500x375", "max_side": 256, "workers": 2,
                             "measure": "prepare_dali", "images_per_s": 80.3, "bound_images_per_s": 165.4,
                             "efficiency": 0.485}], res)
    out = tmp_path / "README.md"
    assert report.main(["--results-dir", str(res), "--out", str(out), "--plots-dir", str(tmp_path / "png")]) == 0
    text = out.read_text()
    fd = next(r for r in _rows(res) if r.get("impl") == "fastdisco" and r["mode"] == "step")
    assert "| mode |" in text and report.fmt(fd["images_per_s"]) in text and fd["run_id"] in text
    assert report.ratio(fd["vs_baseline"]) in text  # the speed-up column
    assert "CPU rows" in text and "To run on a GPU" in text
    assert "infonce" in text and "prepare_dali" in text
    assert (fd["provenance"]["git"]["commit"] or "")[:7] in text
    assert list((tmp_path / "png").glob("*.png"))


@pytest.mark.gpu
def test_model_mode_on_gpu_compiled_fused(tmp_path):
    """On CUDA: compiled bf16 step with the fused losses, CUDA-event timing, peak memory, FLOP
    share of the bf16 peak, the per-part breakdown, and the baseline beside it."""
    res = tmp_path / "results"
    rc = _run(["--mode", "model", "--device", "cuda", "--batch", "64", "--resolution", "64", "--teacher", "resnet18",
               "--student", "resnet18", "--steps", "3", "--warmup", "3", "--results-dir", str(res),
               "--set", "method.queue_size=1024"])
    assert rc == 0
    rows = {r["impl"]: r for r in _rows(res)}
    fd, base = rows["fastdisco"], rows["baseline"]
    assert fd["timer"] == "cuda_events" and fd["compile"] and fd["loss_kernel"] == "triton"
    assert fd["peak_mem_mib"] > 0 and fd["gflop_per_step"] > 0 and fd["breakdown_ms"]["teacher"] > 0
    assert fd["peak_share"] is None or 0 < fd["peak_share"] < 1
    assert base["precision"] == "fp32" and not base["compile"] and fd["vs_baseline"] > 0


def test_disco_breakdown_times_the_batched_views(tmp_path):
    """The per-part breakdown runs the DisCo step's parts as the step runs them: both views of
    student and teacher as one batched forward (grouped BN, shuffle_bn_group 4 of 8), and the loss
    sub-run on cached outputs, view by view."""
    res = tmp_path / "results"
    rc = _run(["--mode", "model", "--method", "disco", "--device", "cpu", "--batch", "8", "--resolution", "32",
               "--teacher", "test_resnet", "--student", "test_efficientnet", "--precision", "fp32", "--no-compile",
               "--steps", "1", "--warmup", "1", "--repeats", "1", "--breakdown", "--results-dir", str(res),
               "--set", "method.queue_size=64", "--set", "model.shuffle_bn_group=4"])
    assert rc == 0
    fd = {r["impl"]: r for r in _rows(res)}["fastdisco"]
    assert set(fd["breakdown_ms"]) >= {"teacher", "student_fwd_bwd", "momentum_encoder", "loss", "optimizer"}
    assert all(v > 0 for v in fd["breakdown_ms"].values()), fd["breakdown_ms"]
