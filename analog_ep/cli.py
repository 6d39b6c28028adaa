"""The ``analog-ep`` command line. On bad input every command exits with status 2 and one line
on stderr starting with ``error:`` (usage errors included), and leaves no partial output file;
``--json`` puts one JSON object on the last line of stdout."""
from __future__ import annotations

import json
import math
import sys
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Optional

import typer
from typer.core import TyperGroup

if TYPE_CHECKING:
    from .circuit import Circuit

# click's UsageError (a missing option, a value of the wrong type), from the click that typer uses
# (recent typers bundle their own copy): the base class of typer.BadParameter
_USAGE_ERROR = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")


@contextmanager
def _one_line_usage_errors() -> Iterator[None]:
    """Usage errors as one ``error:`` line and exit status 2, instead of the usage text and a
    framed message."""
    try:
        yield
    except _USAGE_ERROR as e:
        where = f"{e.ctx.command_path}: " if e.ctx is not None else ""
        typer.echo(f"error: {where}{' '.join(e.format_message().split())}", err=True)
        raise typer.Exit(2) from None


class _Commands(TyperGroup):
    def make_context(self, info_name, args, *rest, **kwargs):
        if not args:  # no arguments: the help text (no_args_is_help)
            return super().make_context(info_name, args, *rest, **kwargs)
        with _one_line_usage_errors():
            return super().make_context(info_name, args, *rest, **kwargs)

    def invoke(self, ctx):
        with _one_line_usage_errors():
            return super().invoke(ctx)


app = typer.Typer(cls=_Commands, add_completion=False, no_args_is_help=True,
                  help="Symmetric neural networks as analog circuits: export SPICE netlists, emulate "
                       "Equilibrium Propagation training, and compare SPICE with the emulator.")


class Phase(str, Enum):
    free = "free"
    nudged = "nudged"


class Backend(str, Enum):
    subprocess = "subprocess"
    pyspice = "pyspice"


# --help groups the commands by use
NETLISTS, SPICE_VS_EMULATOR, TRAINING, STUDIES = "Netlists", "SPICE vs emulator", "Training", "Studies"


def _print_version(value: bool) -> None:
    if value:
        from . import __version__

        typer.echo(f"analog-ep {__version__}")
        raise typer.Exit()


@app.callback()
def _options(version: bool = typer.Option(False, "--version", is_eager=True, callback=_print_version,
                                          help="Print the version and exit.")) -> None:
    """Options that come before the command (the app's help text is set on ``app``)."""


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def _floats(text: str, what: str) -> list[float]:
    from .spice.units import parse_value

    try:
        return [parse_value(t) for t in text.split(",") if t.strip()]
    except ValueError as e:
        _fail(f"{what}: {e}")


def _positive_seconds(value: float, option: str) -> float:
    if not (0 < value < math.inf):
        _fail(f"{option}: expected a number of seconds > 0, got {value:g}")
    return value


def _torch_device_option() -> Any:
    """``--torch-device``: where the emulator's tensors live."""
    return typer.Option(None, "--torch-device", help="Torch device: cpu, cuda or cuda:N (default: cpu).")


def _device_alias_option() -> Any:
    """``--device``: the deprecated name of ``--torch-device``."""
    return typer.Option(None, "--device", help="Deprecated alias of --torch-device.")


def _torch_device(torch_device: Optional[str], alias: Optional[str]) -> str:
    """The torch device given with ``--torch-device``, or with its deprecated alias ``--device``
    (which prints a one-line warning on stderr); cpu if neither. Refused (exit 2) if torch does
    not know it, or if it is a CUDA device and CUDA is not available."""
    import torch

    option, value = ("--torch-device", torch_device or "cpu") if alias is None else ("--device", alias)
    if alias is not None:
        if torch_device is not None:
            _fail("give --torch-device only (--device is its deprecated alias)")
        typer.echo("warning: --device is deprecated; use --torch-device", err=True)
    try:
        kind = torch.device(value).type
    except RuntimeError:
        _fail(f"{option}: {value!r} is not a torch device (cpu, cuda, cuda:N)")
    if kind == "cuda" and not torch.cuda.is_available():
        _fail(f"{option} {value}: CUDA is not available to this torch ({torch.__version__})")
    return value


def _circuit_record(circuit: Circuit) -> dict:
    """What ``--json`` says about a circuit: node and element counts, and the summary line."""
    return dict(nodes=len(circuit.nodes), free_nodes=len(circuit.free_nodes()), elements=circuit.element_counts(),
                summary=circuit.summary())


def _user_errors() -> tuple[type[BaseException], ...]:
    """What bad input (files, settings, decks, data) raises on its way through the library."""
    import pickle

    from .circuit.ir import CircuitError
    from .data.datasets import DataError
    from .emulator.settle import ConvergenceError
    from .spice.ngspice import SpiceError
    from .spice.parser import NetlistError
    from .train import TrainingError
    from .train.logs import MissingDependency

    return (CircuitError, NetlistError, SpiceError, ConvergenceError, DataError, TrainingError, MissingDependency,
            ValueError, KeyError, OSError, TypeError, IndexError, EOFError, pickle.UnpicklingError)


def _guard(fn):
    """Turn user errors into one line and exit status 2."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except _user_errors() as e:
            text = str(e).strip()
            if isinstance(e, KeyError) and e.args:  # str(KeyError) is the key's repr alone
                text = f"missing key {e.args[0]!r}"
            _fail(" ".join(text.splitlines()[0].split()) if text else type(e).__name__)
    return wrapper


def _read_deck(path: Path):
    """Read and validate a deck; print the importer's notes (parameters kept without effect) to stderr."""
    from .spice.parser import deck_notes, read_deck

    circuit = read_deck(path)
    for note in deck_notes(circuit):
        typer.echo(f"note: {note}", err=True)
    return circuit


def load_graph(path: Path):
    """A GraphML (or GML) file as a networkx graph."""
    import networkx as nx

    if not path.exists():
        raise FileNotFoundError(f"no such graph file: {path}")
    try:
        return nx.read_gml(path) if path.suffix.lower() == ".gml" else nx.read_graphml(path)
    except Exception as e:  # networkx raises many parser-specific types
        raise ValueError(f"cannot read graph {path}: {e}") from e


@app.command(rich_help_panel=NETLISTS)
@_guard
def export(
    layers: Optional[str] = typer.Option(None, help="Layer sizes, e.g. 784,100,10 (inputs become +/-x source pairs)."),
    graph: Optional[Path] = typer.Option(None, help="GraphML/GML file: nodes with 'role' (input|bias|hidden|output) "
                                                    "and 'v' for inputs/biases; edges with signed 'weight' in siemens."),
    checkpoint: Optional[Path] = typer.Option(None, help="A trained checkpoint: export its circuit."),
    output: Path = typer.Option(..., "-o", "--output", help="Deck file to write ('-': standard output)."),
    seed: int = typer.Option(0, help="Seed of the random conductances and the default input pattern."),
    phase: Phase = typer.Option(Phase.free, help="free, or nudged (adds beta conductances to target sources)."),
    target: Optional[str] = typer.Option(None, help="Nudged phase: comma-separated target voltages, one per output."),
    beta: float = typer.Option(1e-6, help="Nudged phase: nudge conductance in siemens."),
    amplifier_gain: Optional[float] = typer.Option(None, help="Bidirectional amplifiers of this gain between layers."),
    diode: str = typer.Option("1e-14,1", help="Clamp diodes: 'IS,N', 'IS,N,RS', 'ideal' or 'none'."),
    g_init: str = typer.Option("1e-7,1e-5", help="Range of the initial conductances, siemens: low,high."),
    inputs: Optional[str] = typer.Option(None, help="Inputs, comma-separated (default: random in [0,1]; with "
                                                     "--checkpoint, pixel values scaled by its input_voltage)."),
    norton: bool = typer.Option(False, help="Fold input sources into Norton equivalents (same voltages, much faster SPICE)."),
    pyspice: bool = typer.Option(False, help="Build the deck through PySpice's Circuit API instead of plain text."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on the last line (after the deck, "
                                 "with -o -)."),
):
    """Write a SPICE deck (ngspice syntax) of a layered or graph network."""
    from .circuit import DiodeModel, from_graph, layered
    from .circuit.transforms import fold_sources
    from .spice.netlist import save_deck, write_deck
    from .train.files import atomic_write

    if sum(x is not None for x in (layers, graph, checkpoint)) != 1:
        _fail("give exactly one of --layers, --graph or --checkpoint")
    dmodel = None if diode.strip().lower() == "none" else DiodeModel.parse(diode)
    if checkpoint is not None:
        from .studies.evaluate import circuit_of
        from .train import load_checkpoint

        model = circuit_of(load_checkpoint(checkpoint))
        circuit = model.to_circuit()
        if inputs is not None:
            circuit = model.with_inputs(_floats(inputs, "--inputs"))
    elif layers is not None:
        lo_hi = _floats(g_init, "--g-init")
        if len(lo_hi) != 2:
            _fail("--g-init: expected low,high")
        circuit = layered(layers, seed=seed, amplifier_gain=amplifier_gain, diode=dmodel, g_init=tuple(lo_hi),
                          inputs=None if inputs is None else _floats(inputs, "--inputs"))
    else:
        if amplifier_gain is not None or inputs is not None:
            _fail("--amplifier-gain and --inputs apply to --layers or --checkpoint; set graph inputs with the nodes' 'v'")
        circuit = from_graph(load_graph(graph), diode=dmodel)
    if phase is Phase.nudged:
        if target is None:
            _fail("--phase nudged needs --target y1,y2,...")
        circuit = circuit.nudged(_floats(target, "--target"), beta)
    elif target is not None:
        _fail("--target needs --phase nudged")
    if norton:
        circuit = fold_sources(circuit)
    circuit = circuit.replace(meta=dict(circuit.meta, command="analog-ep " + " ".join(sys.argv[1:])))
    to_stdout = str(output) == "-"
    if pyspice:
        from .spice.pyspice import to_pyspice

        text = str(to_pyspice(circuit))
        if to_stdout:
            typer.echo(text, nl=False)
        else:
            atomic_write(output, lambda tmp: tmp.write_text(text))
    elif to_stdout:
        typer.echo(write_deck(circuit), nl=False)
    else:
        atomic_write(output, lambda tmp: save_deck(circuit, tmp))
    typer.echo(f"wrote {'the deck to stdout' if to_stdout else output}: {circuit.summary()}", err=True)
    if as_json:
        typer.echo(json.dumps(dict(output=str(output), phase=phase.value, norton=norton, pyspice=pyspice,
                                   **_circuit_record(circuit))))


@app.command(rich_help_panel=NETLISTS)
@_guard
def check(deck: Path = typer.Argument(..., help="SPICE deck to validate."),
          as_json: bool = typer.Option(False, "--json", help="Print one JSON object on the last line.")):
    """Parse and validate a deck without running it; print what it contains."""
    circuit = _read_deck(deck)
    if as_json:
        typer.echo(json.dumps(dict(deck=str(deck), ok=True, **_circuit_record(circuit))))
    else:
        typer.echo(f"{deck}: ok: {circuit.summary()}")


@app.command(rich_help_panel=SPICE_VS_EMULATOR)
@_guard
def spice(
    deck: Path = typer.Argument(..., help="SPICE deck (validated first; decks with .control etc. are refused)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on the last line."),
    timeout: float = typer.Option(900.0, help="Seconds before ngspice is stopped (subprocess backend)."),
    backend: Backend = typer.Option(Backend.subprocess, help="subprocess: ngspice -b in a child process; pyspice: "
                                    "ngspice's shared library in this process (no start-up per deck, no timeout)."),
):
    """Run the DC operating point of a deck in ngspice and print the node voltages."""
    from .spice.ngspice import run_op

    _positive_seconds(timeout, "--timeout")
    circuit = _read_deck(deck)
    if backend is Backend.pyspice:
        from .spice.pyspice import run_op_pyspice

        op = run_op_pyspice(circuit)
    else:
        op = run_op(circuit, timeout=timeout)
    for note in op.notes:
        typer.echo(f"ngspice: {note}", err=True)
    if as_json:
        typer.echo(json.dumps(dict(deck=str(deck), backend=backend.value, node_voltages=op.node_voltages, seconds=op.seconds,
                                   analysis_seconds=op.analysis_seconds, options=op.options, notes=op.notes)))
    else:
        typer.echo(f"{deck}: {circuit.summary()}")
        typer.echo(f"ngspice ({backend.value}) {op.seconds:.3f} s, options: " + " ".join(f"{k}={v}" for k, v in op.options.items()))
        for name in circuit.nodes:
            typer.echo(f"{name:>16s} {op.node_voltages[name]: .12g} V")


@app.command(rich_help_panel=SPICE_VS_EMULATOR)
@_guard
def compare(
    deck: Path = typer.Argument(..., help="SPICE deck (validated first)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on the last line."),
    plot: Optional[Path] = typer.Option(None, help="Write a parity plot (PNG) of SPICE vs emulator voltages."),
    batch_inputs: Optional[Path] = typer.Option(None, help="CSV or .npy of input rows (one column per input source)."),
    method: str = typer.Option("auto", help="Emulator solver: auto, bcd or newton."),
    rows: int = typer.Option(20, help="Rows of the node table (worst nodes first)."),
    timeout: float = typer.Option(900.0, help="Seconds before each ngspice run is stopped."),
):
    """Run a deck in ngspice and in the emulator; compare node by node and time both."""
    import numpy as np

    from .studies.compare import compare as run_compare

    _positive_seconds(timeout, "--timeout")
    circuit = _read_deck(deck)
    inputs = None
    if batch_inputs is not None:
        if not batch_inputs.exists():
            raise FileNotFoundError(f"no such file: {batch_inputs}")
        inputs = np.load(batch_inputs) if batch_inputs.suffix == ".npy" else np.loadtxt(batch_inputs, delimiter=",", ndmin=2)
    cmp = run_compare(circuit, inputs, method=method, timeout=timeout)
    opts = " ".join(f"{k}={v}" for k, v in cmp.options.items())
    if plot is not None:
        from .studies.plots import parity_plot, save

        save(parity_plot(cmp), plot)
    if as_json:
        typer.echo(json.dumps(dict(deck=str(deck), max_abs_dv=cmp.max_abs_dv, spice_seconds=cmp.spice_seconds,
                                   emulator_seconds=cmp.emulator_seconds, speedup=cmp.speedup, nodes=len(cmp.nodes),
                                   samples=int(cmp.spice.shape[0]), method=cmp.method, iterations=cmp.iterations,
                                   residual_A=cmp.residual, spice_options=cmp.options, spice_notes=cmp.notes,
                                   plot=None if plot is None else str(plot))))
        return
    typer.echo(f"{deck}: {circuit.summary()}; {cmp.spice.shape[0]} operating point(s)")
    typer.echo(cmp.table(rows))
    typer.echo(f"max |dV| = {cmp.max_abs_dv:.3g} V over {len(cmp.nodes)} nodes")
    typer.echo(f"ngspice {cmp.spice_seconds:.4f} s ({opts}); emulator {cmp.emulator_seconds:.4f} s "
               f"({cmp.method}, {cmp.iterations} sweeps, residual {cmp.residual:.2g} A, float64, gmin modelled); "
               f"speed ratio {cmp.speedup:.0f}x")


def _device_settings(settings: list[str], option: str = "--device-set") -> dict:
    """KEY=VALUE overrides given with ``option`` on the command line (TOML values: 0.01, 64,
    true, inf, "process")."""
    import tomllib

    extra = {}
    for item in settings:
        key, sep, value = item.partition("=")
        if not sep:
            _fail(f"{option} wants KEY=VALUE, not {item!r}")
        try:
            extra[key.strip()] = tomllib.loads(f"v = {value.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            _fail(f"{option} {item!r}: the value must be a number, true/false or a quoted string")
    return extra


@app.command(rich_help_panel=TRAINING)
@_guard
def train(
    config: Path = typer.Option(..., help="TOML config (see examples/)."),
    torch_device: Optional[str] = _torch_device_option(),
    device: Optional[str] = _device_alias_option(),
    epochs: Optional[int] = typer.Option(None, help="Override the config's number of epochs."),
    out: Optional[Path] = typer.Option(None, help="Run directory (default runs/<config name>)."),
    resume: bool = typer.Option(False, help="Continue from the checkpoint in --out."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
    device_model: Optional[str] = typer.Option(None, help="Train in the loop on this device preset "
                                               "(ideal, reram, pcm); overrides the config's [device] preset."),
    device_set: list[str] = typer.Option([], help="Device model field override KEY=VALUE (repeatable)."),
    tensorboard: Optional[Path] = typer.Option(None, help="Write TensorBoard event files to this directory (per "
                                               "epoch: losses, errors, beta, settle sweeps, measurement time, "
                                               "conductance histograms, device statistics; the [tensorboard] extra). "
                                               "Without it, the config's [log] table decides."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on the last line."),
):
    """Train a circuit with Equilibrium Propagation in the emulator. Under torchrun, data-parallel
    over the ranks (gloo on CPU, NCCL on CUDA); rank 0 writes the run directory."""
    from contextlib import nullcontext

    from .studies.run import finish_run
    from .train import Config, Trainer, TrainingError, load_checkpoint, read_checkpoint
    from .train.distributed import init_from_env
    from .train.files import run_lock
    from .train.logs import summary_writer_class
    from .train.trainer import BEST, CHECKPOINT

    device = _torch_device(torch_device, device)
    cfg = Config.load(config)
    if epochs is not None:
        cfg = cfg.updated(train=dict(epochs=epochs))
    if device_model is not None or device_set:
        cfg = cfg.updated(device=dict(preset=device_model or cfg.device.preset, in_the_loop=True,
                                      settings={**cfg.device.settings, **_device_settings(device_set)}))
    if tensorboard is not None:
        cfg = cfg.updated(log=dict(tensorboard=True, tensorboard_dir=str(tensorboard)))
    if cfg.log.tensorboard:
        summary_writer_class()  # tensorboard is installed
    dist = init_from_env(device)
    device = dist.device(device)
    out = out or Path("runs") / cfg.name
    ckpt = out / CHECKPOINT
    say = typer.echo if dist.is_main else (lambda *a, **k: None)
    # everything that can be refused is refused before the run directory is made
    if resume and not ckpt.exists():
        _fail(f"no checkpoint at {ckpt} to --resume")
    trainer = None if resume else Trainer(cfg, device=device, out=out, dist=dist)
    splits = None if resume else trainer.data.splits  # the network fits the data
    with run_lock(out) if dist.is_main else nullcontext():  # one run per directory (rank 0 writes it)
        if resume:
            trainer = load_checkpoint(ckpt, device=device, dist=dist)
            trainer.cfg = trainer.cfg.resumable_with(cfg)
            splits = trainer.data.splits
        elif ckpt.exists():
            _fail(f"{ckpt} exists: pass --resume to continue it, or choose another --out")
        say(f"{cfg.name}: {trainer.summary()}; {splits}" + (f"; {dist.world} ranks" if dist.active else ""), err=True)
        try:
            trainer.fit(progress=progress)
        except TrainingError as e:
            _fail(str(e))
        done = finish_run(trainer, out)
        dist.close()  # every rank waits for rank 0's files, then leaves the group
    best = None  # the epoch checkpoint_best.pt holds (rank 0 reports it)
    if dist.is_main and (out / BEST).exists():
        state = read_checkpoint(out / BEST)[1]
        best = dict(checkpoint=str(out / BEST), epoch=state["epoch"], val_error=state["history"][-1]["val_error"])
    if as_json:
        log = trainer.cfg.log
        say(json.dumps(dict(config=cfg.name, out=str(out), checkpoint=str(ckpt), epoch=trainer.epoch,
                            test_error=done["test_error"], n=done["n"], history=[m.__dict__ for m in trainer.history],
                            wrote=done["wrote"], tensorboard=(log.tensorboard_dir or str(out / "tensorboard"))
                            if log.tensorboard else None, best=best)))
    else:
        say(f"test error {100 * done['test_error']:.2f} % on {done['n']} images; wrote {ckpt}, metrics.csv/json, "
            f"{', '.join(Path(p).name for p in done['wrote'])} in {out}"
            + (f"; the lowest validation error, {100 * best['val_error']:.2f} % (epoch {best['epoch']}), is kept "
               f"in {BEST}" if best else ""))


@app.command(rich_help_panel=TRAINING)
@_guard
def evaluate(
    checkpoint: Path = typer.Option(..., help="Checkpoint file or run directory."),
    dataset: Optional[str] = typer.Option(None, help="mnist, fashion or digits (default: the training set's)."),
    spice: int = typer.Option(0, help="Also run this many test images through ngspice and compare."),
    torch_device: Optional[str] = _torch_device_option(),
    device: Optional[str] = _device_alias_option(),
    device_model: Optional[str] = typer.Option(None, help="Deploy the trained conductances on this device "
                                               "preset (ideal, reram, pcm) and report mean and spread."),
    device_set: list[str] = typer.Option([], help="Device model field override KEY=VALUE (repeatable)."),
    realisations: int = typer.Option(5, help="Device realisations (or read-noise repeats) to average."),
    power: bool = typer.Option(False, "--power", help="Also estimate energy, power and latency per inference and "
                               "per training step on the first 100 test digits (as 'analog-ep power')."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on the last line."),
):
    """Test error of a trained circuit in the emulator; with --spice N, the proof in ngspice.
    With --device-model, the error when deployed on non-ideal devices (train ideal, deploy
    noisy); a circuit trained in the loop is evaluated on its own devices."""
    from .studies.evaluate import evaluate_checkpoint

    device = _torch_device(torch_device, device)
    extra = _device_settings(device_set)
    result = evaluate_checkpoint(checkpoint, dataset=dataset, spice=spice, device=device, deploy_preset=device_model,
                                 deploy_settings=extra, realisations=realisations, progress=True)
    if power:
        from .studies.power import checkpoint_energy

        result["power"] = checkpoint_energy(checkpoint, device=device)
    test_error, errors = result["test_error"], result.get("test_errors", [])
    for note in result["notes"]:
        typer.echo(f"note: {note}", err=True)
    if as_json:
        typer.echo(json.dumps(result))
    else:
        spread = f" ± {100 * result['test_error_std']:.2f} % over {len(errors)} runs ({result['deployment']}, " \
                 f"{result['device_preset']})" if "test_errors" in result else ""
        typer.echo(f"{result['dataset']} test error {100 * test_error:.2f} %{spread} on {result['n']} images "
                   f"(epoch {result['epoch']})")
        if spice > 0:
            typer.echo(f"ngspice agrees with the emulator on {result['spice_agree']}/{result['spice_n']} digits; "
                       f"max |dV| {result['max_abs_dv']:.2g} V; {result['spice_seconds']:.1f} s in ngspice")
        if power:
            _echo_energy(result["power"])


@app.command(rich_help_panel=STUDIES)
@_guard
def sweep(
    checkpoint: Path = typer.Option(..., help="Trained checkpoint (file or run directory)."),
    vary: list[str] = typer.Option(..., help="FIELD=v1,v2,... of a device model field (repeatable)."),
    preset: str = typer.Option("ideal", help="Device preset the varied field replaces."),
    realisations: int = typer.Option(5, help="Device realisations per level."),
    loop_epochs: int = typer.Option(1, help="Epochs of in-the-loop training per level (0: deploy-only)."),
    loop_realisations: Optional[int] = typer.Option(None, help="Device realisations trained in the loop "
                                                    "per level (default: --realisations)."),
    train_subset: Optional[int] = typer.Option(None, help="Train in the loop on the first N training images."),
    test_subset: Optional[int] = typer.Option(None, help="Evaluate on the first N test images."),
    device_set: list[str] = typer.Option([], help="Device model field KEY=VALUE for every level, on top of --preset "
                                         "(repeatable; strings quoted: 'read_noise_model=\"process\"')."),
    train_set: list[str] = typer.Option([], help="[train] setting KEY=VALUE for the in-the-loop fine-tuning "
                                        "(repeatable), e.g. 'estimator=\"cds\"' beta=2e-4."),
    out: Path = typer.Option(Path("runs/sweep"), help="Directory for sweep.csv/json/md/png."),
    torch_device: Optional[str] = _torch_device_option(),
    device: Optional[str] = _device_alias_option(),
):
    """Robustness study: test error vs each non-ideality's level, deploy-only and in the loop."""
    from .studies.sweep import parse_vary, run_sweep, write_sweep
    from .train.progress import echo

    device = _torch_device(torch_device, device)
    if realisations < 1 or (loop_realisations is not None and loop_realisations < 1):
        _fail("--realisations and --loop-realisations must be >= 1")
    levels = parse_vary(vary)
    show = lambda r: echo(f"{r.field}={r.level:g} {r.mode}: {100 * r.error_mean:.2f} ± {100 * r.error_std:.2f} %")
    settings, train = _device_settings(device_set), _device_settings(train_set, "--train-set")
    rows = run_sweep(checkpoint, levels, preset=preset, realisations=realisations, loop_epochs=loop_epochs,
                     loop_realisations=loop_realisations, train_subset=train_subset, test_subset=test_subset,
                     settings=settings, train=train, on_row=show, progress=True, device=device)
    meta = dict(checkpoint=str(checkpoint), preset=preset, device_settings=settings, train_settings=train,
                realisations=realisations, loop_epochs=loop_epochs, loop_realisations=loop_realisations or realisations,
                train_subset=train_subset, test_subset=test_subset, command=" ".join(sys.argv))
    paths = write_sweep(rows, out, meta)
    typer.echo(paths["md"].read_text())
    typer.echo(f"wrote {', '.join(str(p) for p in paths.values())}")


def _si(x: float, unit: str) -> str:
    """x with an SI prefix, 3 significant digits: 1.47e-09 J -> '1.47 nJ'."""
    if x == 0 or not math.isfinite(x):
        return f"{x:g} {unit}"
    k = max(-5, min(4, math.floor(math.log10(abs(x)) / 3)))
    return f"{x / 10 ** (3 * k):.3g} {'fpnµm kMGT'[k + 5].strip()}{unit}"


def _echo_energy(r: dict) -> None:
    """The energy report of 'power' (and 'evaluate --power') as a few lines."""
    s = r["spread"]
    pm = lambda key, unit: f"{_si(s[key]['mean'], unit)} ± {_si(s[key]['std'], unit)}"
    typer.echo(f"{r['circuit']}; first {r['n_samples']} {r['dataset']} test digits")
    typer.echo(f"per inference: energy {pm('energy_per_inference_J', 'J')}, power {pm('power_W', 'W')}, settle "
               f"{pm('settle_time_s', 's')} (to {r['energy_model']['settle_tolerance']:.3g}), latency "
               f"{_si(r['latency_per_inference_s'], 's')} (with one ADC conversion)")
    top = sorted(r["breakdown_J"].items(), key=lambda kv: -kv[1])[:4]
    typer.echo("  largest parts: " + ", ".join(f"{k} {_si(v, 'J')}" for k, v in top))
    if "energy_per_training_step_J" in r:
        t = r["training_step"]
        typer.echo(f"per training step ({t['mode']}, beta {t['beta_S']:g} S, batch {t['batch_size']}): "
                   f"{pm('energy_per_training_step_J', 'J')} per sample (device writes "
                   f"{_si(t['write_energy_per_sample_J'], 'J')}), latency {_si(r['latency_per_training_step_s'], 's')}")
    if "digital" in r:
        d = r["digital"]
        typer.echo(f"digital MLP {','.join(map(str, d['layers']))} ({d['flops_per_inference']:,} FLOPs per inference): "
                   + "; ".join(f"{p['name']} {_si(p['energy_per_inference_J'], 'J')} "
                               f"({p['inference_ratio_digital_over_analog']:.3g}x analog)" for p in d["platforms"]))
    if "spice" in r:
        sp = r["spice"]
        typer.echo(f"ngspice on {sp['n']} digits: powers agree to {sp['max_rel_power_difference']:.2g} (relative), "
                   f"source currents to {sp['max_abs_source_current_difference_A']:.2g} A; {sp['spice_seconds']:.1f} s")
    for note in r["notes"]:
        typer.echo(f"note: {note}", err=True)


@app.command(rich_help_panel=STUDIES)
@_guard
def power(
    checkpoint: Path = typer.Option(..., help="Trained circuit checkpoint (file or run directory)."),
    n: int = typer.Option(100, help="Test digits to average over (the first N of the test set)."),
    spice: int = typer.Option(0, help="Also run the first N of them through ngspice (full decks: ~20 s each for "
                              "2x784-100-10) and compare powers and source currents."),
    energy_set: list[str] = typer.Option([], "--set", help="Energy model override KEY=VALUE (repeatable), e.g. "
                                         "node_capacitance=1e-13; fields in analog_ep.studies.power.EnergyModel."),
    plot: Optional[Path] = typer.Option(None, help="Write a PNG of the energy breakdown per inference."),
    torch_device: Optional[str] = _torch_device_option(),
    device: Optional[str] = _device_alias_option(),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on the last line."),
):
    """Energy, power and latency per inference and per EP training step of a trained circuit,
    broken down by element group, against the same network on digital hardware."""
    from .studies.power import EnergyModel, checkpoint_energy

    device = _torch_device(torch_device, device)
    energy = EnergyModel().updated(_device_settings(energy_set, "--set"))
    result = checkpoint_energy(checkpoint, n=n, energy=energy, spice=spice, device=device)
    if plot is not None:
        from .studies.plots import energy_breakdown_plot, save

        result["plot"] = str(save(energy_breakdown_plot(result), plot))
    if as_json:
        typer.echo(json.dumps(result))
    else:
        _echo_energy(result)


@app.command(rich_help_panel=STUDIES)
@_guard
def gdu(
    model: str = typer.Option("toy", help="toy (seed 003 C.2), eb-1h or p-1h (784-512-10 on MNIST), p-conv (appendix D on MNIST)."),
    seed: int = typer.Option(0, help="Initialisation and data draw."),
    batch: int = typer.Option(20, help="Samples the processes are averaged over (the seed: 20)."),
    plot: Optional[Path] = typer.Option(None, help="PNG of ΔEP vs −∇BPTT processes."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on the last line."),
    free_steps: Optional[int] = typer.Option(None, "--free-steps", "-T", min=1, help="Override the seed's T."),
    nudged_steps: Optional[int] = typer.Option(None, "--nudged-steps", "-K", min=1, help="Override the seed's K."),
    beta: Optional[float] = typer.Option(None, help="Override the seed's β (> 0)."),
    init_scale: float = typer.Option(1.0, help="Initial weights: Glorot bound × this (> 0)."),
):
    """The GDU property (seed 003): EP's per-step updates vs BPTT's gradients, RelMSE per layer.
    T, K and β default to the seed's table 3; overriding them is the seed's way of searching
    hyper-parameters (the processes should coincide)."""
    from .studies.gdu import run
    from .studies.plots import gdu_plot, save

    result, proc = run(model, seed=seed, batch=batch, init_scale=init_scale, T=free_steps, K=nudged_steps, beta=beta,
                       progress=True)
    settings = {k: result[k] for k in ("T", "K", "beta")}
    if plot is not None:
        save(gdu_plot(proc), plot)
        result["plot"] = str(plot)
    if as_json:
        typer.echo(json.dumps(result))
        return
    typer.echo(f"{model}: T={settings['T']} K={settings['K']} beta={settings['beta']}, batch {batch}; "
               f"free phase residual {result['free_residual']:.1e}")
    for name, v in result["rel_mse"].items():
        sign = result["sign_agreement"].get(name)
        typer.echo(f"  {name:>6s}: RelMSE {v:.4f}" + ("" if sign is None else f", sign agreement {100 * sign:.1f} %"))


@app.command(rich_help_panel=TRAINING)
@_guard
def pack(
    checkpoint: Path = typer.Option(..., help="Checkpoint file or run directory."),
    output: Path = typer.Option(..., "-o", "--output", help="Packed checkpoint to write."),
    half: bool = typer.Option(False, help="Store conductances as float16 (halves the size)."),
):
    """Write a weights-only checkpoint (no optimizer/RNG state) for distribution."""
    from .train import load_checkpoint

    trainer = load_checkpoint(checkpoint)
    path = trainer.pack(output, half=half)
    typer.echo(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB); it evaluates and exports but cannot resume")


def main() -> None:
    app(prog_name="analog-ep")


if __name__ == "__main__":
    main()
