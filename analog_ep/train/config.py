"""Training configuration: a dataclass tree read from TOML, with every quantity in SI units.

Each table is a dataclass whose annotations are its settings' types and whose field metadata
holds their allowed values (:func:`setting`). :meth:`Config.validate` checks every value against
both, so a wrong value is a one-line ``ValueError`` naming its key and what it expects
(``[train] lr: expected a list of numbers (or one number), got 'f'``).

The ``[model]`` table has one class per model kind (:data:`MODEL_KINDS`) holding only the
settings that kind uses; the ``[circuit]`` table and the circuit-only ``[train]`` settings
(conductance bounds, settle tolerance) belong to ``kind = "circuit"``. A setting that does not
apply to the chosen kind is an error naming it.

Checkpoints store :meth:`Config.to_dict` (``config_format`` :data:`FORMAT`);
:meth:`Config.from_stored` also reads the flat format of earlier checkpoints.
"""
from __future__ import annotations

import dataclasses
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from types import NoneType, UnionType
from typing import Any, Callable, ClassVar, Mapping, Sequence, Union, get_args, get_origin, get_type_hints

from ..circuit import parse_layers
from ..devices import DeviceModel
from ..models.circuit import diode_from_spec
from ..models.discrete import ACTIVATIONS as DISCRETE_ACTIVATIONS
from ..models.estimators import KINDS as ESTIMATORS
from ..models.hopfield import RHO as HOPFIELD_ACTIVATIONS

FORMAT = 2  # config_format of Config.to_dict (1: the flat format of earlier checkpoints)


def setting(default: Any, *, ge: float | None = None, gt: float | None = None, le: float | None = None,
            choices: Sequence[str] | None = None, check: Callable[[Any], object] | None = None,
            circuit_only: bool = False) -> Any:
    """A dataclass field with its allowed values: bounds ``ge``/``gt``/``le`` (on every element of
    a list or pair), ``choices``, or a ``check`` that raises ValueError; ``circuit_only`` marks a
    ``[train]`` setting that only circuits have."""
    meta = dict(ge=ge, gt=gt, le=le, choices=tuple(choices) if choices else None, check=check,
                circuit_only=circuit_only)
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


# ---------------------------------------------------------------------------- typed checks
_NOUN = {int: ("integer", "integers"), float: ("finite number", "finite numbers"), str: ("string", "strings")}


def _describe(hint: Any, finite: bool = True) -> str:
    """What a type annotation expects, in words."""
    origin, args = get_origin(hint), get_args(hint)
    if origin in (Union, UnionType):
        return _describe(next(a for a in args if a is not NoneType), finite)
    if origin is list:
        one, many = _NOUN[args[0]]
        return f"a list of {many} (or one {one})"
    if origin is tuple:
        return f"a list of {len(args)} {_NOUN[args[0]][1]}"
    return {int: "an integer", float: "a finite number" if finite else "a number", bool: "true or false",
            str: "a string", dict: "a table"}[hint]


def _convert(value: Any, hint: Any, finite: bool) -> Any:
    """``value`` as type ``hint`` (TOML's integers pass as floats, a bare value as a one-element
    list, a list as a tuple); TypeError if it is not one."""
    origin, args = get_origin(hint), get_args(hint)
    if origin in (Union, UnionType):
        return None if value is None and NoneType in args else _convert(
            value, next(a for a in args if a is not NoneType), finite)
    if origin in (list, tuple):
        items = list(value) if isinstance(value, (list, tuple)) else [value] if origin is list else None
        if items is None or (origin is tuple and len(items) != len(args)):
            raise TypeError
        items = [_convert(v, args[0], finite) for v in items]
        return items if origin is list else tuple(items)
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        if finite and not math.isfinite(value):
            raise TypeError
        return float(value)
    if hint is int and isinstance(value, bool):
        raise TypeError
    if hint in (int, bool, str, dict) and isinstance(value, hint):
        return value
    raise TypeError


def typed(where: str, value: Any, hint: Any, finite: bool = True) -> Any:
    """``value`` checked against the annotation ``hint`` (int, float, bool, str, dict, X | None,
    list[X], tuple[X, ...]) and converted to it; ``finite``: refuse NaN and infinities. A
    mismatch is a ValueError that names ``where`` and what it expects."""
    try:
        return _convert(value, hint, finite)
    except TypeError:
        raise ValueError(f"{where}: expected {_describe(hint, finite)}, got {value!r}") from None


def _check_range(where: str, value: Any, hint: Any, meta: Mapping) -> None:
    """The bounds, choices and check of a field's metadata (bounds apply to every element)."""
    if value is None:
        return
    items = value if isinstance(value, (list, tuple)) else [value]
    bounds = [(meta.get("ge"), ">=", lambda v, b: v >= b), (meta.get("gt"), ">", lambda v, b: v > b),
              (meta.get("le"), "<=", lambda v, b: v <= b)]
    wanted = " and ".join(f"{op} {b:g}" for b, op, _ in bounds if b is not None)
    if any(b is not None and not ok(v, b) for v in items for b, _, ok in bounds):
        what = "values" if isinstance(value, (list, tuple)) else _describe(hint)
        raise ValueError(f"{where}: expected {what} {wanted}, got {value!r}")
    choices = meta.get("choices")
    if choices and value not in choices:
        raise ValueError(f"{where}: expected one of {', '.join(choices)}, got {value!r}")
    if meta.get("check") is not None:
        try:
            meta["check"](value)
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None


def _check_table(section: str, table: Any) -> None:
    """Check (and convert in place) every field of a table's dataclass."""
    hints = get_type_hints(type(table))
    for f in dataclasses.fields(table):
        where = f"[{section}] {f.name}"
        value = typed(where, getattr(table, f.name), hints[f.name])
        _check_range(where, value, hints[f.name], f.metadata)
        setattr(table, f.name, value)


def _nonempty(values: list) -> None:
    if not values:
        raise ValueError("expected at least one value")


# ---------------------------------------------------------------------------- tables
@dataclass
class DataConfig:
    dataset: str = "mnist"  # mnist | fashion | digits
    batch_size: int = setting(128, ge=1)
    train_subset: int | None = setting(None, ge=1)  # use only the first N training images (quick runs)
    val_size: int | None = setting(None, ge=1)  # keep the first N validation images for validation; the others join the training set
    shift: int = setting(0, ge=0, le=8)  # augment: translate each training image by up to this many pixels per axis (0 = off)


@dataclass
class CircuitConfig:
    """The ``[circuit]`` table of ``kind = "circuit"``: the layered circuit's construction."""
    layers: str = setting("784,100,10", check=parse_layers)
    seed: int = setting(0, ge=0)
    amplifier_gain: float | None = setting(4.0, gt=0)
    diode: str = setting("1e-14,1", check=diode_from_spec)  # 'IS,N' (Shockley, exported as is), 'ideal' (emulator-only clamp) or 'none'
    clamp: tuple[float, float] = (0.6, 0.4)  # clamp source voltages (low, high), V
    g_init: tuple[float, float] = setting((1e-7, 1e-5), ge=0)  # S, low <= high
    bias: bool = True
    input_voltage: float = setting(1.0, gt=0)  # V applied for a pixel value of 1 (sets signal size vs the diode knees)


@dataclass
class TrainConfig:
    epochs: int = setting(10, ge=0)
    optimizer: str = setting("adam", choices=("sgd", "adam"))
    lr: list[float] = setting([2e-7, 2e-7], gt=0)  # per layer (or one for all), S per step (Adam) or S²/V² (SGD)
    # the rates in (0-based) epoch e: lr · lr_decay^max(0, e − lr_decay_from); epoch lr_decay_from
    # still runs at lr, the one after it at lr · lr_decay
    lr_decay: float = setting(1.0, gt=0, le=1)
    lr_decay_from: int = setting(0, ge=0)
    momentum: float = setting(0.0, ge=0)
    weight_decay: float = setting(0.0, ge=0)  # L2 penalty: each step also moves θ by −lr·weight_decay·θ (torch.optim's)
    beta: float = setting(1e-4, gt=0)  # nudge strength (circuits: nudge conductance, S)
    nudging: str = setting("centered", choices=("positive", "centered", "random"))
    g_min: float = setting(0.0, ge=0, circuit_only=True)  # S
    g_max: float = setting(1e-4, gt=0, circuit_only=True)  # S
    target: tuple[float, float] = (0.0, 1.0)  # output targets (wrong class, right class); V for circuits
    dtype: str = setting("float32", choices=("float32", "float64"))
    rtol: float = setting(1e-4, gt=0, circuit_only=True)  # settle tolerance (relative voltage error)
    max_iters: int = setting(200, ge=1, circuit_only=True)  # settle sweeps
    fused: bool = setting(False, circuit_only=True)  # settles run their diode kernels compiled (torch.compile; analog_ep.emulator.fusion)
    seed: int = setting(0, ge=0)
    eval_batch: int = setting(1000, ge=1)
    # circuits on devices: ep (per-settle reads) | cds | lockin (analog_ep.models.estimators)
    estimator: str = setting("ep", choices=ESTIMATORS, circuit_only=True)
    lockin_periods: int = setting(4, ge=1, circuit_only=True)  # lockin: K periods of the oscillating nudge
    lockin_points: int = setting(4, ge=2, circuit_only=True)  # lockin: N settles per period
    update_time: float = setting(0.0, ge=0, circuit_only=True)  # s on the devices' clock between two EP steps (programming pulses)
    init_from: str | None = None  # fine-tuning: start from this checkpoint's parameters (file or run directory, relative to the working directory); fresh optimizer and schedule


CIRCUIT_ONLY = tuple(f.name for f in dataclasses.fields(TrainConfig) if f.metadata.get("circuit_only"))  # [train] settings of circuits


@dataclass
class ModelConfig:
    """The ``[model]`` table: the analog circuit (default) or one of the seed papers' abstract EP
    models, which train with the same loop, checkpoints and metrics. One subclass per kind, with
    that kind's settings only."""
    kind: ClassVar[str]

    def weight_layers(self, circuit: CircuitConfig | None) -> int:
        """Weight layers, which take one learning rate each."""
        raise NotImplementedError


@dataclass
class CircuitModelConfig(ModelConfig):
    """``kind = "circuit"``: the circuit of the ``[circuit]`` table; no settings of its own."""
    kind: ClassVar[str] = "circuit"

    def weight_layers(self, circuit: CircuitConfig | None) -> int:
        return len(parse_layers(circuit.layers)) - 1


@dataclass
class SeedModelConfig(ModelConfig):
    """What every seed model has: its layers, activation and phase lengths."""
    layers: str = setting("784,500,10", check=parse_layers)  # input, hidden..., output (p-conv: input, the dense layers after the convolutions)
    activation: str = "hardsigmoid"
    free_steps: int = setting(20, ge=1)  # free-phase iterations (T)
    nudged_steps: int = setting(4, ge=1)  # nudged-phase iterations (K)
    eval_steps: int = setting(0, ge=0)  # free-phase iterations when predicting (0: free_steps)
    init_scale: float = setting(1.0, gt=0)  # Glorot bound x this (p-conv at 1.0 starts with saturated outputs)

    def weight_layers(self, circuit: CircuitConfig | None) -> int:
        return len(parse_layers(self.layers)) - 1


@dataclass
class HopfieldConfig(SeedModelConfig):
    """``kind = "hopfield"``: continuous Hopfield EP (seed 000)."""
    kind: ClassVar[str] = "hopfield"
    activation: str = setting("hardsigmoid", choices=HOPFIELD_ACTIVATIONS)
    eps: float = setting(0.5, gt=0)  # step size
    persistent: bool = False  # persistent particles
    temperature: float = setting(0.0, ge=0)  # Langevin relaxation


@dataclass
class DiscreteConfig(SeedModelConfig):
    """The discrete-time models of seeds 002/003."""
    activation: str = setting("hardsigmoid", choices=DISCRETE_ACTIVATIONS)
    continual: bool = False  # C-EP: update the weights at every nudged step (vf + continual = C-VF)


@dataclass
class EBConfig(DiscreteConfig):
    """``kind = "eb"``: the energy-based discrete-time model."""
    kind: ClassVar[str] = "eb"
    eps: float = setting(0.5, gt=0)  # step size
    clip: bool = True  # keep states in [0, 1] (the seed's training setting)


@dataclass
class PConfig(DiscreteConfig):
    """``kind = "p"``: the prototypical discrete-time model."""
    kind: ClassVar[str] = "p"


@dataclass
class PConvConfig(DiscreteConfig):
    """``kind = "p-conv"``: the prototypical convolutional model (seed 003 appendix D)."""
    kind: ClassVar[str] = "p-conv"
    channels: list[int] = setting([32, 64], ge=1, check=_nonempty)  # feature maps per convolution, from the input
    kernel: int = setting(5, ge=1)  # convolution size (no padding, stride 1)
    pool: int = setting(2, ge=1)  # max-pool size and stride

    def weight_layers(self, circuit: CircuitConfig | None) -> int:
        return super().weight_layers(circuit) + len(self.channels)


@dataclass
class VFConfig(DiscreteConfig):
    """``kind = "vf"``: the vector-field model (asymmetric forward and backward weights)."""
    kind: ClassVar[str] = "vf"
    angle: float = setting(0.0, ge=0, le=180)  # initial angle between forward and backward weights, degrees


MODEL_KINDS: dict[str, type[ModelConfig]] = {c.kind: c for c in (
    CircuitModelConfig, HopfieldConfig, EBConfig, PConfig, PConvConfig, VFConfig)}


@dataclass
class DeviceConfig:
    """The ``[device]`` table: a preset, optional field overrides, and whether training updates
    go through the devices (in the loop) or the devices only matter when deployed."""
    preset: str = "ideal"
    in_the_loop: bool = False
    seed: int = setting(0, ge=0)  # device realisation
    settings: dict = field(default_factory=dict)  # DeviceModel fields replacing the preset's

    @classmethod
    def from_table(cls, table: Mapping) -> "DeviceConfig":
        """The table as TOML gives it: ``preset``, ``in_the_loop``, ``seed`` and DeviceModel fields
        (directly or under ``settings``)."""
        table = dict(table)
        own = {k: table.pop(k) for k in ("preset", "in_the_loop", "seed") if k in table}
        cfg = cls(**own, settings={**typed("[device] settings", table.pop("settings", {}), dict), **table})
        cfg.model()  # validates
        return cfg

    def model(self) -> DeviceModel:
        """The device model: the preset with the settings' fields replaced (each checked against
        the field's type; infinities pass, as ``on_off = inf``)."""
        _check_table("device", self)
        hints = get_type_hints(DeviceModel)
        return DeviceModel.build(self.preset, **{
            k: typed(f"[device] {k}", v, hints[k], finite=False) if k in hints else v for k, v in self.settings.items()})


@dataclass
class LogConfig:
    """The ``[log]`` table: what a run records besides its checkpoint and metrics files. It never
    changes the training, so it may differ when a run is resumed."""
    tensorboard: bool = False  # TensorBoard event files, one record per epoch (needs the [tensorboard] extra)
    tensorboard_dir: str = ""  # where they go (default: <run directory>/tensorboard)


# ---------------------------------------------------------------------------- the config
SECTIONS = ("data", "circuit", "train", "device", "model", "log")
RECORDING = ("log",)  # sections that record a run without changing it: free to differ on --resume


@dataclass
class Config:
    name: str = "run"
    data: DataConfig = field(default_factory=DataConfig)
    circuit: CircuitConfig | None = field(default_factory=CircuitConfig)  # None unless model.kind = "circuit"
    train: TrainConfig = field(default_factory=TrainConfig)
    device: DeviceConfig = field(default_factory=DeviceConfig)
    model: ModelConfig = field(default_factory=CircuitModelConfig)
    log: LogConfig = field(default_factory=LogConfig)
    expected: str = ""  # the result and time the config is expected to give (documentation)

    @property
    def is_circuit(self) -> bool:
        return self.model.kind == "circuit"

    def to_dict(self) -> dict:
        """The config as plain values (what a checkpoint stores): only the tables and settings
        that apply to the model kind."""
        out = dict(config_format=FORMAT, name=self.name, expected=self.expected, data=dataclasses.asdict(self.data))
        if self.circuit is not None:
            out["circuit"] = dataclasses.asdict(self.circuit)
        out["train"] = {k: v for k, v in dataclasses.asdict(self.train).items()
                        if self.is_circuit or k not in CIRCUIT_ONLY}
        out["device"] = dataclasses.asdict(self.device)
        out["model"] = dict(kind=self.model.kind, **dataclasses.asdict(self.model))
        out["log"] = dataclasses.asdict(self.log)
        return out

    @classmethod
    def from_dict(cls, raw: Mapping) -> "Config":
        """A config from its tables (a parsed TOML file, or :meth:`to_dict`), checked."""
        raw = dict(raw)
        fmt = raw.pop("config_format", FORMAT)
        if fmt != FORMAT:
            raise ValueError(f"config_format: expected {FORMAT}, got {fmt!r}")
        unknown = sorted(set(raw) - set(SECTIONS) - {"name", "expected"})
        if unknown:
            raise ValueError(f"unknown config section(s): {unknown}")
        tables = {k: typed(f"[{k}]", raw.get(k, {}), dict) for k in SECTIONS}
        model = dict(tables["model"])
        kind = model.pop("kind", "circuit")
        if kind not in MODEL_KINDS:
            raise ValueError(f"[model] kind: expected one of {', '.join(MODEL_KINDS)}, got {kind!r}")
        if kind != "circuit" and "circuit" in raw:
            raise ValueError(f"[circuit] applies to model kind 'circuit' only; a {kind!r} model is described "
                             "by [model] layers")
        cfg = cls(name=raw.get("name", "run"), expected=raw.get("expected", ""),
                  data=_build("data", DataConfig, tables["data"], kind),
                  circuit=_build("circuit", CircuitConfig, tables["circuit"], kind) if kind == "circuit" else None,
                  train=_build("train", TrainConfig, tables["train"], kind),
                  device=DeviceConfig.from_table(tables["device"]),
                  model=_build("model", MODEL_KINDS[kind], model, kind),
                  log=_build("log", LogConfig, tables["log"], kind))
        return cfg.validate()

    @classmethod
    def from_stored(cls, raw: Mapping) -> "Config":
        """The config a checkpoint stores. Checkpoints written before ``config_format`` 2 hold
        every kind's ``[model]`` settings, and a ``[circuit]`` table and the circuit-only
        ``[train]`` settings whatever the kind; those that do not apply to the kind never had an
        effect, and are dropped."""
        if not isinstance(raw, Mapping):
            raise ValueError(f"the stored config is not a table: {type(raw).__name__}")
        if "config_format" in raw:
            return cls.from_dict(raw)
        raw = dict(raw)
        model = dict(raw.get("model", {}))
        kind = model.get("kind", "circuit")
        if kind in MODEL_KINDS:
            own = {f.name for f in dataclasses.fields(MODEL_KINDS[kind])}
            raw["model"] = {k: v for k, v in model.items() if k == "kind" or k in own}
            if kind != "circuit":
                raw.pop("circuit", None)
                raw["train"] = {k: v for k, v in raw.get("train", {}).items() if k not in CIRCUIT_ONLY}
        return cls.from_dict(raw)

    @classmethod
    def load(cls, path: str | Path) -> "Config":
        path = Path(path)
        try:
            raw = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"no such config: {path}") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{path}: invalid TOML: {e}") from None
        raw.setdefault("name", path.stem)
        try:
            return cls.from_dict(raw)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None

    def updated(self, **tables: Mapping) -> "Config":
        """This config with some settings replaced, checked as a config file's, e.g.
        ``cfg.updated(train=dict(epochs=5))``."""
        raw = self.to_dict()
        for section, values in tables.items():
            raw[section] = {**raw.get(section, {}), **values}
        return Config.from_dict(raw)

    SCHEDULE = ("epochs", "lr_decay", "lr_decay_from")
    SPEED = ("fused",)  # how the same computation runs (results equal to rounding)

    def resumable_with(self, other: "Config") -> "Config":
        """This (checkpointed) config with ``other``'s schedule (epochs, learning-rate decay),
        speed settings (``fused``) and :data:`RECORDING` tables (``[log]``): those may change
        when a run is extended; anything else would make the resumed run a different
        experiment, so it is refused."""
        flat = lambda cfg: {f"{sec}.{k}": v for sec in SECTIONS if sec not in RECORDING
                            for k, v in cfg.to_dict().get(sec, {}).items()}
        mine, theirs = flat(self), flat(other)
        free = {f"train.{s}" for s in self.SCHEDULE + self.SPEED}
        diffs = [k for k in dict.fromkeys([*mine, *theirs]) if mine.get(k) != theirs.get(k) and k not in free]
        if diffs:
            raise ValueError(f"the config differs from the checkpoint's in {', '.join(diffs)}; only "
                             "train.epochs/lr_decay/lr_decay_from/fused (and the [log] table) may change on --resume")
        carried = [k for k in self.SCHEDULE + self.SPEED if self.is_circuit or k not in CIRCUIT_ONLY]
        return self.updated(train={k: getattr(other.train, k) for k in carried},
                            **{sec: dataclasses.asdict(getattr(other, sec)) for sec in RECORDING})

    def validate(self) -> "Config":
        """Check every setting's type and range, and the settings that depend on each other."""
        self.name, self.expected = typed("name", self.name, str), typed("expected", self.expected, str)
        kind = self.model.kind
        if (self.circuit is not None) != (kind == "circuit"):
            raise ValueError("the [circuit] table goes with model kind 'circuit', and only with it")
        for section in ("data", "circuit", "train", "model", "log"):
            if getattr(self, section) is not None:
                _check_table(section, getattr(self, section))
        self.device.model()
        t = self.train
        if self.circuit is not None:
            if t.g_min >= t.g_max:
                raise ValueError(f"[train] g_min: expected a value below g_max ({t.g_max:g} S), got {t.g_min:g}")
            lo, hi = self.circuit.g_init
            if lo > hi:
                raise ValueError(f"[circuit] g_init: expected low <= high, got {[lo, hi]}")
        if self.device.in_the_loop and kind != "circuit":
            raise ValueError("[device] in_the_loop: device models apply to circuits only (model.kind = 'circuit')")
        if getattr(self.model, "continual", False) and t.nudging == "centered":
            raise ValueError("[model] continual nudges one way: set [train] nudging to positive or random")
        n_layers = self.model.weight_layers(self.circuit)
        if len(t.lr) not in (1, n_layers):
            raise ValueError(f"[train] lr: give one learning rate or one per layer ({n_layers}), got {len(t.lr)}")
        return self


def _build(section: str, cls: type, table: Mapping, kind: str) -> Any:
    """A table's dataclass from its settings, refusing the unknown ones and those that do not
    apply to the model kind (types and ranges are :meth:`Config.validate`'s)."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in table:
        f = fields.get(key)
        if f is not None and not (f.metadata.get("circuit_only") and kind != "circuit"):
            continue
        owners = ["circuit"] if f is not None else [k for k, c in MODEL_KINDS.items()
                                                   if section == "model" and key in {g.name for g in dataclasses.fields(c)}]
        if owners:
            raise ValueError(f"[{section}] {key} does not apply to model kind {kind!r} "
                             f"(a setting of {', '.join(owners)})")
        raise ValueError(f"[{section}] {key}: unknown setting; known: {', '.join(fields) or 'none'}")
    return cls(**table)
