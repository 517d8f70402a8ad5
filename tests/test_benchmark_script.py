"""scripts/benchmark.py: its command line, its network3 and PyTorch
workers on a few steps of the shallow network, and its floor model.  The
timings themselves are not checked (a shared machine is noisy); PyTorch is
not a dependency of network3, so its test is skipped when torch is missing."""

import importlib
import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "benchmark.py"
sys.path.insert(0, str(ROOT / "scripts"))
benchmark = importlib.import_module("benchmark")


def _run(*args, cwd=None):
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True,
                          text=True, cwd=cwd, timeout=300)


def _sane(result, steps_expected=True):
    assert "error" not in result, result
    assert 0 < result["first_call_s"] < 300
    if steps_expected:
        assert 0 < result["step_ms"] < 1000
        assert math.isclose(result["epoch_s"], result["step_ms"] * 5000 / 1e3, rel_tol=1e-9)
    assert result["peak_mb"] > 0


def test_help_prints_and_writes_nothing(tmp_path):
    report = ROOT / "results" / "benchmark.md"
    before = report.stat().st_mtime_ns if report.exists() else None
    out = _run("--help", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "--torch-python" in out.stdout and "--out" in out.stdout
    assert "double_fc_dropout (eta 0.03, lmbda 0.0, p_dropout 0.5)" in " ".join(
        out.stdout.split())
    assert list(tmp_path.iterdir()) == []
    assert (report.stat().st_mtime_ns if report.exists() else None) == before


def test_network3_worker_json():
    out = _run("--worker", "network3", "--net", "shallow", "--steps", "5", "--warmup", "2")
    assert out.returncode == 0, out.stderr
    _sane(json.loads(out.stdout.strip().splitlines()[-1]))


@pytest.mark.skipif(importlib.util.find_spec("torch") is None,
                    reason="torch is not importable by this Python (PyTorch is not a "
                    "dependency of network3: pip install torch to run the baseline)")
def test_torch_worker_json():
    out = _run("--worker", "torch", "--net", "shallow", "--steps", "5", "--warmup", "2",
               "--threads", "1")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    _sane(result)
    assert result["threads"] == 1


@pytest.mark.parametrize("worker", ["network3", "torch"])
def test_workers_train_with_momentum(worker):
    if worker == "torch" and importlib.util.find_spec("torch") is None:
        pytest.skip("torch is not importable by this Python")
    out = _run("--worker", worker, "--net", "shallow", "--steps", "5", "--warmup", "2",
               "--momentum", "0.9", *(["--threads", "1"] if worker == "torch" else []))
    assert out.returncode == 0, out.stderr
    _sane(json.loads(out.stdout.strip().splitlines()[-1]))


def test_momentum_goes_to_every_worker_and_into_the_report(tmp_path, monkeypatch):
    """--momentum MU: each worker's command line has it (network3's first
    call with an empty cache, network3's, PyTorch's and JAX's steps), the
    report's settings say it; out of [0, 1) it is refused."""
    calls = []

    def worker(python, argv, env=None, timeout=1800):
        calls.append(argv)
        return {"threads": 1, "first_call_s": 1.0, "steps": 3, "step_ms": 1.0,
                "epoch_s": 5.0, "peak_mb": 1.0}
    probe = benchmark._probe
    monkeypatch.setattr(benchmark, "run_worker", worker)
    monkeypatch.setattr(benchmark, "_probe", lambda python, code: {
        benchmark._TORCH_VERSIONS: "torch (made up)|2",
        benchmark._JAX_VERSIONS: "jax (made up)"}.get(code) or probe(python, code))
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "bench.md"
    benchmark.main(["--nets", "double_fc_dropout", "--steps", "3", "--warmup", "1",
                    "--repeats", "1", "--momentum", "0.9", "--no-floor", "--out", str(out)])
    assert len(calls) == 5  # empty cache, network3, PyTorch 1 and 2 threads, JAX
    for argv in calls:
        assert argv[argv.index("--momentum") + 1] == "0.9", argv
    assert "| double_fc_dropout (eta 0.03, lmbda 0.0, p_dropout 0.5, momentum 0.9) |" \
        in out.read_text()
    refused = _run("--momentum", "1.0", cwd=tmp_path)
    assert refused.returncode == 2 and "--momentum must be in [0, 1), got 1.0" in refused.stderr


def test_main_writes_the_report(tmp_path, monkeypatch):
    """main(argv), importable: one round of network3 alone, written with its
    command line, date and versions at the top."""
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "bench.md"
    results = benchmark.main(["--nets", "shallow", "--steps", "3", "--warmup", "1",
                              "--repeats", "1", "--no-torch", "--no-jax", "--no-cold",
                              "--no-floor", "--out", str(out)])
    _sane(results["shallow"]["network3"][0])
    text = out.read_text()
    assert "scripts/benchmark.py --nets shallow --steps 3" in text
    assert "PyTensor" in text and "load average" in text and "date: " in text
    assert "| shallow (eta 0.1, lmbda 0.0) |" in text
    assert os.listdir(tmp_path) == ["bench.md"]


def test_record_and_the_readme_table(tmp_path, monkeypatch):
    """--record appends one JSON line per run; benchmark_table.py writes the
    newest commit's runs between the README's markers and keeps the rest."""
    monkeypatch.chdir(tmp_path)
    runs = tmp_path / "runs.jsonl"
    args = ["--nets", "shallow", "--steps", "3", "--warmup", "1", "--repeats", "1",
            "--no-torch", "--no-jax", "--no-cold", "--no-floor", "--record", str(runs)]
    benchmark.main(args)
    recorded = json.loads(runs.read_text())
    shallow = recorded["nets"]["shallow"]
    assert 0 < shallow["network3_ms"] < 1000 and shallow["speedup"] is None
    # two more runs by hand: an older commit's (left out) and another Python's
    old = dict(recorded, commit="1234567 (older)")
    old["nets"] = {"shallow": dict(shallow, speedup=9.99)}
    # another Python than this one (a made-up version, newer than any)
    other = dict(recorded, network3="Python 3.99.0, PyTensor 3.3.8", date="later",
                 end="18:00 UTC")
    other["nets"] = {"shallow": dict(shallow, torch_ms=2 * shallow["network3_ms"],
                                     speedup=2.0, cold_s=12.34, cached_s=1.0)}
    runs.write_text("\n".join(json.dumps(r) for r in (old, recorded, other)) + "\n")
    readme = tmp_path / "README.md"
    readme.write_text("# top\n<!-- performance:start -->\nold\n<!-- performance:end -->\nend\n")
    table = importlib.import_module("benchmark_table")
    table.main(["--runs", str(runs), "--readme", str(readme)])
    text = readme.read_text()
    assert text.startswith("# top\n") and text.endswith("end\n") and "\nold\n" not in text
    assert "9.99x" not in text  # the older commit's run
    this = f"{sys.version_info.major}.{sys.version_info.minor}"
    assert "| later to 18:00 | 3.99 |" in text and "| 2.00x |" in text
    assert f"network3 s/epoch, {this} / 3.99" in text and "12.3 s, 1.0 s" in text


def test_floor_model_counts():
    """The products and bytes of one step: three products per layer but the
    first (its input needs no gradient), 2*m*n*k FLOPs each, (1 - p) of
    them under a dropout mask; the weights read once and updated once."""
    work = benchmark.step_work("shallow")
    assert work["products"] == [(10, 784, 100, 1.0), (784, 10, 100, 1.0),
                                (10, 100, 10, 1.0), (100, 10, 10, 1.0), (10, 10, 100, 1.0)]
    assert work["weight_bytes"] == 3 * 4 * (784 * 100 + 100 + 100 * 10 + 10)
    products = benchmark.step_work("dbl_conv_relu")["products"]
    flops = sum(2 * m * k * n * kept for m, k, n, kept in products)
    # conv 1: 10 x 20 x 24 x 24 outputs of 25 products, forward and weights'
    # gradient; conv 2: 10 x 40 x 8 x 8 of 500, three times
    conv = 2 * (2 * 10 * 20 * 576 * 25) + 3 * (2 * 10 * 40 * 64 * 500)
    fc = 3 * 2 * 10 * 640 * 100 + 3 * 2 * 10 * 100 * 10
    assert flops == conv + fc
    products = benchmark.step_work("double_fc_dropout")["products"]
    fc = sum(2 * m * k * n * kept for m, k, n, kept in products[5:])
    assert fc == 0.5 * 3 * 2 * 10 * (640 * 1000 + 1000 * 1000 + 1000 * 10)


def test_floor_from_measurements():
    """best_floor: the fastest product speed and the highest bandwidth of
    the runs; the floor is the larger of compute and memory."""
    def run(rate, bw):
        return {"blas": [], "large_bytes": 1, "bw_large": bw, "sgemm_1024_flops": rate,
                "flop_rate": rate, "nets": {"n": {
                    "products": 3, "dense_flops": 4e6, "flops": 2e6, "blas_s": 1e-3,
                    "bytes": 1e6, "working_set": 1e6, "bw": bw}}}
    best = benchmark.best_floor([run(1e11, 1e10), run(2e11, 5e9), {"error": "x"}])
    net = best["nets"]["n"]
    assert best["runs"] == 2 and best["flop_rate"] == 2e11
    assert math.isclose(net["compute_s"], 1e-5) and math.isclose(net["memory_s"], 1e-4)
    assert net["floor_s"] == net["memory_s"]


def test_the_header_names_the_network3_the_workers_run(tmp_path, monkeypatch):
    # run from a folder holding another network3: the workers (scripts run as
    # files) do not import it, so the header's probe must not either
    (tmp_path / "network3").mkdir()
    (tmp_path / "network3" / "__init__.py").write_text("")
    monkeypatch.chdir(tmp_path)
    code = "import os, network3; print(os.path.dirname(os.path.abspath(network3.__file__)))"
    found = benchmark._probe(sys.executable, code)
    assert found is not None
    assert Path(found) != tmp_path / "network3"
    worker = subprocess.run([sys.executable, "-c", f"import sys; sys.path[0] = "
                             f"{str(ROOT / 'scripts')!r}; {code}"],
                            capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert Path(found) == Path(worker.stdout.strip())
