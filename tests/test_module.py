"""The model interface: AnalogCircuit as a torch.nn.Module, the package's layering, and the
shipped checkpoints evaluating as they did before the redesign."""
import ast
import json
from pathlib import Path

import networkx as nx
import pytest
import torch

import analog_ep
from analog_ep import AnalogCircuit
from analog_ep.data import load_dataset
from analog_ep.emulator.ep import ep_gradient
from analog_ep.models import EPModel
from analog_ep.train import Trainer

from .conftest import ROOT
from .test_train import tiny_config

DIGITS = load_dataset("digits")
PACKAGE = ROOT / "analog_ep"


def tiny_circuit(**kw) -> AnalogCircuit:
    return AnalogCircuit(layers="64,32,10", amplifier_gain=4.0, clamp=(0.6, 0.4), g_init=(1e-6, 1e-5),
                         target=(0.0, 0.2), beta=2e-5, dtype=torch.float64, **kw)


def test_analog_circuit_is_a_module_with_conductance_parameters():
    m = AnalogCircuit(layers="784,100,10")
    assert isinstance(m, torch.nn.Module) and isinstance(m, EPModel)
    assert [n for n, _ in m.named_parameters()] == ["g:w1p", "g:w1n", "g:b1p", "g:b1n", "g:w2p", "g:w2n", "g:b2p", "g:b2n"]
    x = torch.rand(3, 784)
    assert m(x).shape == (3, 10)
    m.ep_step(x, torch.tensor([1, 2, 3]))
    assert all(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in m.parameters())
    before = m(x)
    torch.optim.SGD(m.parameters(), lr=1e-9).step()
    m.project()
    assert not torch.equal(m(x), before)


def test_ep_step_grad_is_bit_for_bit_the_emulator_ep_gradient():
    """What ep_step leaves in .grad is exactly emulator.ep.ep_gradient on the same sources,
    targets and β (float64), the function the trainer's EP step has always used; and the
    trainer's step applies exactly that gradient."""
    x, labels = DIGITS.x_train[:16], torch.as_tensor(DIGITS.y_train[:16])
    tr = Trainer(tiny_config(), data=DIGITS)
    m = tr.model
    expect = ep_gradient(m.cc, m.cc.inputs_to_sources(torch.as_tensor(x, dtype=torch.float64)),
                         m.targets(labels), 2e-5, mode="centered", keys=tr.keys, rtol=m.rtol, max_iters=m.max_iters)
    m.ep_step(x, labels)
    for k in tr.keys:
        assert torch.equal(m.trainable()[k].grad, expect.grads[k]), k
    m.ep_step(x, labels)  # accumulates, as autograd's backward does
    assert torch.equal(m.trainable()["g:w1p"].grad, 2 * expect.grads["g:w1p"])
    before = {k: p.detach().clone() for k, p in m.trainable().items()}
    manual = torch.optim.Adam([torch.nn.Parameter(before["g:w1p"].clone())], lr=2e-6, fused=True)  # the trainer's
    manual.param_groups[0]["params"][0].grad = expect.grads["g:w1p"]
    manual.step()
    tr.step(x, labels)
    assert torch.equal(m.trainable()["g:w1p"], manual.param_groups[0]["params"][0].detach().clamp(0, 1e-4))


def test_labels_or_target_voltages_give_the_same_gradient():
    m = tiny_circuit()
    x, labels = DIGITS.x_train[:8], torch.as_tensor(DIGITS.y_train[:8])
    m.ep_step(x, labels)
    by_label = {k: p.grad.clone() for k, p in m.trainable().items()}
    m.zero_grad()
    m.ep_step(x, m.targets(labels))
    assert all(torch.equal(p.grad, by_label[k]) for k, p in m.trainable().items())
    with pytest.raises(ValueError, match="64 inputs"):
        m(torch.rand(2, 63))


def test_state_dict_round_trip_and_dtype_moves():
    m = tiny_circuit(seed=3)
    fresh = tiny_circuit(seed=4)
    x = DIGITS.x_val[:20]
    assert not torch.equal(fresh(x), m(x))
    fresh.load_state_dict(m.state_dict())
    assert torch.equal(fresh(x), m(x))
    m32 = tiny_circuit(seed=3).to(torch.float32)
    assert m32.cc.dtype == torch.float32 and m32(x).dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in m32.parameters())
    assert m32.cc.params["g:w1p"] is m32.trainable()["g:w1p"]  # the settle reads the module's parameter
    torch.testing.assert_close(m32(x).double(), m(x), rtol=0, atol=2e-4)  # float32 settle at rtol 1e-5


def test_circuit_from_a_graph_and_from_a_checkpoint(tmp_path):
    g = nx.Graph()
    g.add_node("x0p", role="input", v=0.0)
    g.add_node("x0n", role="input", v=0.0)
    g.add_node("h", role="hidden")
    g.add_node("o", role="output")
    g.add_edge("x0p", "h", weight=1e-5)
    g.add_edge("x0n", "h", weight=2e-5)
    g.add_edge("h", "o", weight=-5e-6)
    from analog_ep.circuit import from_graph

    m = AnalogCircuit(circuit=from_graph(g, diode=None), dtype=torch.float64)
    assert m.n_in == 1 and m.n_out == 1
    # o hears h only through the inverted copy (½|w|(V_h + V_o)²), so V_o = −V_h, and
    # V_h = (1e-5·2 V + 2e-5·(−2 V)) / 3e-5 S = −2/3 V
    assert float(m(torch.tensor([[2.0]]))[0, 0]) == pytest.approx(2 / 3, abs=1e-9)
    tr = Trainer(tiny_config(epochs=1), data=DIGITS, out=tmp_path)
    tr.fit(progress=False)
    loaded = AnalogCircuit.from_checkpoint(tmp_path)
    assert torch.equal(loaded(DIGITS.x_test[:10]), tr.model(DIGITS.x_test[:10]))


# ---------------------------------------------------------------------------- layering
LAYERS = ["circuit", "spice", "data", "emulator", "devices", "models", "train", "studies", "cli"]


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """(absolute analog_ep module, imported names) for every import in a file."""
    pkg = list(path.relative_to(ROOT).parts[:-1])
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg[:len(pkg) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.startswith("analog_ep"):
                out.append((mod, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names if a.name.startswith("analog_ep")]
    return out


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def test_package_has_no_import_cycle_and_respects_its_layers():
    files = sorted(PACKAGE.rglob("*.py"))
    graph = nx.DiGraph()
    wrong = []
    for f in files:
        me = _module_name(f)
        graph.add_node(me)
        for mod, names in _imports(f):
            target = mod
            for n in names:  # `from .x import y` where y is a submodule
                if (ROOT / Path(*f"{mod}.{n}".split("."))).with_suffix(".py").exists():
                    graph.add_edge(me, f"{mod}.{n}")
            if target != me:
                graph.add_edge(me, target)
            a, b = _layer(me), _layer(target)
            if a in LAYERS and b in LAYERS and LAYERS.index(b) > LAYERS.index(a):
                wrong.append(f"{me} imports {target} (layer {b} is above {a})")
            private = [n for n in names if n.startswith("_") and n != "__version__"]
            if private and target.split(".")[:2] != me.split(".")[:2]:
                wrong.append(f"{me} imports private {private} from {target}")
    cycles = list(nx.simple_cycles(graph))
    assert not cycles, cycles[:5]
    assert not wrong, wrong


def test_every_subpackage_says_what_it_may_import():
    for init in sorted(PACKAGE.glob("*/__init__.py")):
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        assert "May import" in doc, init


# ---------------------------------------------------------------------------- shipped checkpoints
REGRESSION = json.loads((ROOT / "tests" / "pretrained_subset.json").read_text())


@pytest.mark.parametrize("path", sorted(REGRESSION), ids=lambda p: f"{Path(p).parent.name}/{Path(p).stem}")
def test_pretrained_checkpoint_evaluates_as_before(path):
    """Each shipped checkpoint classifies the first 500 MNIST test images with the same number of
    errors as before the model-interface redesign (measured with the code of commit 032c2bb; the
    retrained seed_hopfield_1h with its own run's code, the Fashion-MNIST ones with the code of
    their fine-tuning round, the in-the-loop reram and pcm ones with the code of the round that
    made them: they read through their own devices, whose seeded read noise is part of the
    figure), and its outputs sum to the same value (float32 summation order: 1e-4 relative)."""
    if not (Path(analog_ep.__file__).parents[1] / path).exists():
        pytest.fail(f"{path} is listed but missing")
    from analog_ep.train import load_checkpoint

    expect = REGRESSION[path]
    tr = load_checkpoint(ROOT / path)
    # "images": a stand-in dataset CI has (the Fashion-MNIST checkpoints read MNIST's test images:
    # their outputs are checked, "wrong" counts against MNIST's labels)
    data = load_dataset(expect["images"]) if "images" in expect else tr.data
    V, pred = tr.predict(data.x_test[:expect["subset"]])
    assert int((pred != torch.as_tensor(data.y_test[:expect["subset"]])).sum()) == expect["wrong"]
    assert float(V.double().sum()) == pytest.approx(expect["out_sum"], rel=1e-4)


@pytest.mark.parametrize("run", sorted(p.parent.name for p in ROOT.glob("examples/in_progress/*/checkpoint.pt")))
def test_an_in_progress_checkpoint_resumes_where_its_log_stops(run):
    """A long run stopped for time (``examples/in_progress/<run>/``) is committed as a full
    checkpoint so that a later session continues it exactly: the file loads as training state
    (optimizer and generator included), at the epoch its ``metrics.csv`` ends with, with the
    same per-epoch validation errors, and the example config of the same name (what the command
    that continues it passes) is one ``--resume`` accepts for it."""
    import csv

    from analog_ep.train import Config, load_checkpoint, read_checkpoint

    where = ROOT / "examples" / "in_progress" / run
    _, state = read_checkpoint(where / "checkpoint.pt")
    assert {"optimizer", "rng"} <= set(state), "not a full checkpoint: it cannot resume exactly"
    tr = load_checkpoint(where / "checkpoint.pt")
    rows = list(csv.DictReader((where / "metrics.csv").read_text().splitlines()))
    assert tr.epoch == len(rows) == int(rows[-1]["epoch"])
    assert [h.val_error for h in tr.history] == pytest.approx([float(r["val_error"]) for r in rows], abs=1e-12)
    tr.cfg.resumable_with(Config.load(ROOT / "examples" / f"{run}.toml"))  # ValueError where it is not
