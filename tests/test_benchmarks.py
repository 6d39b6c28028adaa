"""The benchmark scripts' shared conventions (--devices) and the DRN side-by-side harness, run
against a stand-in for the reference checkout (the real one is never fetched)."""
import runpy
import sys

import pytest
import torch

from .conftest import ROOT

BENCHMARKS = ROOT / "benchmarks"
SCRIPTS = sorted(p for p in BENCHMARKS.glob("*.py") if p.name != "torch_devices.py")
DRN = BENCHMARKS / "drn_side_by_side.py"

# a stand-in for the reference repository: the classes and methods the harness calls, doing little
FAKE_REFERENCE = {
    "model/resistive/network.py": '''
import torch


class Param:
    def __init__(self, n):
        self.state = torch.full((n,), 0.5, requires_grad=True)
        self.clamps = 0

    def clamp_(self):
        self.clamps += 1


class Layer:
    def __init__(self, shape):
        self.state = torch.zeros(1, *shape)


class DeepResistiveEnergy:
    def __init__(self, layer_shapes, weight_gains, input_gain):
        self.shapes, self.device = layer_shapes, None
        self._layers = [Layer(s) for s in layer_shapes]
        self._params = [Param(3), Param(2)]

    def set_device(self, device):
        self.device = device

    def layers(self):
        return self._layers

    def params(self):
        return self._params
''',
    "model/function/network.py": '''
class Network:
    def __init__(self, energy):
        self.energy = energy

    def free_layers(self):
        return self.energy.layers()[1:]

    def set_input(self, x, reset=False):
        self.energy.layers()[0].state = x
''',
    "model/function/cost.py": '''
class SquaredError:
    def __init__(self, layer):
        self.layer, self.labels = layer, None

    def set_target(self, labels):
        self.labels = labels

    def params(self):
        return []
''',
    "model/resistive/minimizer.py": '''
class QuadraticMinimizer:
    def __init__(self, fn, layers):
        self.fn, self.layers, self.calls = fn, layers, 0

    def compute_equilibrium(self):
        self.calls += 1
''',
    "training/sgd.py": '''
import torch


class AugmentedFunction:
    def __init__(self, energy, cost):
        self.energy, self.cost = energy, cost


class EquilibriumProp:
    def __init__(self, params, layers, fn, cost, minimizer):
        self.params, self.minimizer = params, minimizer

    def compute_gradient(self):
        return [torch.ones_like(p.state) for p in self.params]
''',
}


def script_globals(name: str) -> dict:
    """The globals a benchmark script's functions read, so that a test can replace one of them
    (runpy.run_path returns a copy of them, which the functions never see)."""
    return runpy.run_path(str(BENCHMARKS / name))["main"].__globals__


@pytest.fixture
def benchmarks_on_path(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    yield
    for name in [m for m in sys.modules if m.split(".")[0] in ("model", "training")]:
        del sys.modules[name]  # the stand-in reference's modules


@pytest.mark.parametrize("script", SCRIPTS, ids=[p.stem for p in SCRIPTS])
def test_every_benchmark_takes_devices(script, benchmarks_on_path, monkeypatch, capsys):
    args = ["nowhere"] if script == DRN else []
    monkeypatch.setattr(sys, "argv", [script.name, *args, "--devices", "abacus"])
    with pytest.raises(SystemExit) as stop:
        runpy.run_path(str(script), run_name="__main__")
    assert stop.value.code == 2
    assert "--devices: 'abacus' is not a torch device" in capsys.readouterr().err
    if not torch.cuda.is_available():
        monkeypatch.setattr(sys, "argv", [script.name, *args, "--devices", "cuda"])
        with pytest.raises(SystemExit):
            runpy.run_path(str(script), run_name="__main__")
        assert "CUDA is not available" in capsys.readouterr().err


def test_drn_without_the_reference_says_what_it_needs(tmp_path, benchmarks_on_path, monkeypatch, capsys):
    out = tmp_path / "r.json"
    monkeypatch.setattr(sys, "argv", [DRN.name, str(tmp_path / "nowhere"), "--out", str(out)])
    runpy.run_path(str(DRN), run_name="__main__")  # returns: exit status 0
    text = capsys.readouterr().out
    assert "rain-neuromorphics/energy-based-learning" in text and "no such directory" in text
    assert "model/resistive/network.py: DeepResistiveEnergy" in text and not out.exists()
    partial = tmp_path / "partial"
    (partial / "model" / "function").mkdir(parents=True)
    (partial / "model" / "function" / "cost.py").write_text("class Other:\n    pass\n")
    monkeypatch.setattr(sys, "argv", [DRN.name, str(partial), "--out", str(out)])
    runpy.run_path(str(DRN), run_name="__main__")
    text = capsys.readouterr().out
    assert "model/function/cost.py: no class SquaredError" in text and "training/sgd.py: no such file" in text
    assert not out.exists()


def test_drn_harness_alternates_ours_with_the_reference(tmp_path, benchmarks_on_path):
    for name, text in FAKE_REFERENCE.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    drn = runpy.run_path(str(DRN), run_name="drn")
    assert drn["missing"](tmp_path) == []
    reference = drn["Reference"](drn["load_reference"](tmp_path), "cpu")
    trainer = drn["ours"]("cpu", 4)
    assert trainer.cfg.circuit.layers == "784,1024,10" and trainer.model.mode == "centered"
    g = torch.Generator().manual_seed(0)
    batches = [(torch.rand(4, 784, generator=g), torch.randint(0, 10, (4,), generator=g)) for _ in range(3)]
    before = {k: p.detach().clone() for k, p in trainer.params.items()}
    times = drn["alternate"]({"ours": trainer.step, "theirs": reference.step}, batches, repeats=2, device="cpu",
                             warmup=1)
    assert {k: len(v) for k, v in times.items()} == {"ours": 2, "theirs": 2}
    assert reference.inference.calls == 3 and [p.clamps for p in reference.params] == [3, 3]
    assert torch.allclose(reference.params[0].state, torch.full((3,), 0.5 - 3 * 0.006))  # SGD at 0.006, 3 steps
    assert reference.network.energy.layers()[0].state.shape == (4, 1, 28, 28)
    assert torch.equal(reference.cost.labels, batches[2][1])  # the last round's batch
    assert any(not torch.equal(p, before[k]) for k, p in trainer.params.items())


def test_ep_step_measures_the_matmul_rate_before_and_after_the_steps(benchmarks_on_path):
    """benchmarks/ep_step.py's peak is the median of five large products timed before the steps
    and five after, and the fraction is the median step's rate over it (no wall-clock time is
    asserted here)."""
    import statistics

    ep_step = script_globals("ep_step.py")
    small = ep_step["MatmulRate"]
    ep_step["MatmulRate"] = lambda device, dtype: small(device, dtype, n=64)
    g = torch.Generator().manual_seed(0)
    data = (torch.rand(10, 784, generator=g), torch.randint(0, 10, (10,), generator=g), "random")
    row = ep_step["bench"]("xs", "cpu", "float32", 2, 3, data, eager=True)
    peaks = row["matmul_peak_flops_per_s_all"]
    assert len(row["step_seconds_all"]) == 3 and len(peaks) == 10
    assert row["matmul_peak_flops_per_s"] == statistics.median(peaks)
    assert row["fraction_of_peak"] == row["matmul_flops"] / row["step_seconds"] / statistics.median(peaks)


def test_epoch_benchmark_writes_every_epoch_and_the_step_time(tmp_path, benchmarks_on_path, monkeypatch, capsys):
    """benchmarks/epoch.py trains --epochs epochs of a config and writes each epoch's record, the
    validation pass and the steps it divided by (no wall-clock value is asserted)."""
    import json

    config = tmp_path / "tiny.toml"
    config.write_text('name = "tiny"\n[data]\ndataset = "digits"\nbatch_size = 32\n[circuit]\nlayers = "64,16,10"\n'
                      '[train]\nepochs = 5\nlr = [2e-6]\nbeta = 2e-5\ntarget = [0.0, 0.2]\n')
    out = tmp_path / "epoch.json"
    monkeypatch.setattr(sys, "argv", ["epoch.py", "--config", str(config), "--epochs", "2", "--train-subset", "70",
                                      "--out", str(out)])
    runpy.run_path(str(BENCHMARKS / "epoch.py"), run_name="__main__")
    result = json.loads(out.read_text())
    assert [e["epoch"] for e in result["epochs"]] == [1, 2]
    assert result["train_images"] == 70 and result["steps_per_epoch"] == 3 and result["batch"] == 32
    assert result["device"] == "cpu" and result["validation_images"] > 0
    assert result["step_seconds_last_epoch"] == pytest.approx(
        (result["epochs"][-1]["seconds"] - result["validation_seconds"]) / 3)
    assert "epoch 2:" in capsys.readouterr().out


def test_ep_step_keeps_the_rows_measured_before_a_failure(tmp_path, benchmarks_on_path, monkeypatch):
    """ep_step.py writes its JSON after every row, so a run stopped part-way (a timeout on a lent
    GPU, an error) keeps what it measured."""
    import json

    ep_step = script_globals("ep_step.py")
    calls = []

    def bench(name, device, dtype, batch, repeats, data, eager):
        calls.append(batch)
        if len(calls) == 2:
            raise KeyboardInterrupt  # what a stopped run raises in the middle of a row
        return dict(circuit=name, batch=batch, step_seconds=1.0, per_sample_seconds=1.0 / batch, free_sweeps=2.0,
                    achieved_flops_per_s=1.0, fraction_of_peak=0.5, matmul_peak_flops_per_s=2.0)

    ep_step["bench"], ep_step["inputs"] = bench, lambda n: None
    out = tmp_path / "steps.json"
    monkeypatch.setattr(sys, "argv", ["ep_step.py", "--circuits", "xs", "--batches", "1,2", "--dtypes", "float32",
                                      "--devices", "cpu", "--out", str(out)])
    with pytest.raises(KeyboardInterrupt):
        ep_step["main"]()
    assert [row["batch"] for row in json.loads(out.read_text())["steps"]] == [1]
    assert [p.name for p in tmp_path.iterdir()] == ["steps.json"]  # no temporary file left behind


def test_step_profile_counts_each_operation_once_in_its_kind(benchmarks_on_path):
    """benchmarks/step_profile.py: an operation is counted at its outermost level (the product
    inside ``matmul`` with the matmul), in its kind (dense products, compiled kernels, the fused
    Adam, other operations by name); on a real eager XS step the kinds and the rest add up to
    the profiled step (no wall-clock value is asserted)."""
    from torch.profiler import ProfilerActivity, profile

    sp = script_globals("step_profile.py")
    twice = torch.compile(lambda t: t * 2 + 1)
    a, b = torch.rand(64, 64), torch.rand(64, 64)
    w = torch.nn.Parameter(torch.rand(8))
    opt = torch.optim.Adam([w], fused=True)
    w.grad = torch.ones(8)
    twice(a)  # compiled outside the profile
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        a @ b
        twice(a)
        opt.step()
        a.sum()
    kinds = sp["categorise"](prof.events(), 1)
    assert {"dense products", "compiled kernels", "optimizer", "other: sum"} <= set(kinds)
    matmuls = [e for e in prof.events() if e.name == "aten::matmul"]
    assert len(matmuls) == 1 and kinds["dense products"] == pytest.approx(matmuls[0].cpu_time_total / 1e3)
    assert not any(k in ("other: mm", "other: add", "other: mul") for k in kinds)  # inside matmul, the compiled graph

    row = sp["run"]("xs", 2, "float32", 2, 1, True, "cpu")
    assert row["fused"] is False and row["compiled_kernels_ms"] == 0.0 and len(row["step_ms_unprofiled_all"]) == 2
    assert row["dense_products_ms"] > 0 and row["optimizer_ms"] > 0 and row["other_operations_ms"] > 0
    parts = row["dense_products_ms"] + row["optimizer_ms"] + row["other_operations_ms"]
    assert row["python_dispatch_guards_ms"] == pytest.approx(row["step_ms_profiled"] - parts)
    assert row["other_operations_ms"] == pytest.approx(sum(row["other_operations"].values()))
