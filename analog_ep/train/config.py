"""Training configuration: a dataclass tree read from TOML, with every quantity in SI units."""
from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class DataConfig:
    dataset: str = "mnist"  # mnist | fashion | digits
    batch_size: int = 128
    train_subset: int | None = None  # use only the first N training images (quick runs)


@dataclass
class CircuitConfig:
    layers: str = "784,100,10"
    seed: int = 0
    amplifier_gain: float | None = 4.0
    diode: str = "1e-14,1"  # 'IS,N' (Shockley, exported as is) or 'ideal' (emulator-only clamp)
    clamp: tuple[float, float] = (0.6, 0.4)  # clamp source voltages (low, high), V
    g_init: tuple[float, float] = (1e-7, 1e-5)  # S
    bias: bool = True
    input_voltage: float = 1.0  # V applied for a pixel value of 1 (sets signal size vs the diode knees)


@dataclass
class TrainConfig:
    epochs: int = 10
    optimizer: str = "adam"  # sgd | adam
    lr: list[float] = field(default_factory=lambda: [2e-7, 2e-7])  # per layer, S per step (Adam) or S²/V² (SGD)
    lr_decay: float = 1.0  # learning rates x lr_decay per epoch from epoch lr_decay_from on
    lr_decay_from: int = 0
    momentum: float = 0.0
    beta: float = 1e-4  # nudge conductance, S
    nudging: str = "centered"  # positive | centered | random
    g_min: float = 0.0  # S
    g_max: float = 1e-4  # S
    target: tuple[float, float] = (0.0, 1.0)  # output target voltages (wrong class, right class)
    dtype: str = "float32"
    rtol: float = 1e-4  # settle tolerance (relative voltage error)
    max_iters: int = 200
    seed: int = 0
    eval_batch: int = 1000
    estimator: str = "ep"  # circuits on devices: ep (per-settle reads) | cds | lockin (analog_ep.models.estimators)
    lockin_periods: int = 4  # lockin: K periods of the oscillating nudge
    lockin_points: int = 4  # lockin: N settles per period
    update_time: float = 0.0  # s on the devices' clock between two EP steps (programming pulses)


@dataclass
class ModelConfig:
    """The ``[model]`` table: the analog circuit (default) or one of the seed papers' abstract EP
    models, which train with the same loop, checkpoints and metrics."""
    kind: str = "circuit"  # circuit | hopfield (seed 000) | eb | p | p-conv | vf (seeds 002/003, discrete time)
    layers: str = "784,500,10"  # input, hidden..., output (p-conv: input, the dense layers after the convolutions)
    activation: str = "hardsigmoid"  # hopfield: hardsigmoid | logistic; eb/p: tanh | sigmoid | hardsigmoid
    free_steps: int = 20  # free-phase iterations (T)
    nudged_steps: int = 4  # nudged-phase iterations (K)
    eval_steps: int = 0  # free-phase iterations when predicting (0: free_steps)
    eps: float = 0.5  # step size (hopfield, eb)
    persistent: bool = False  # persistent particles (hopfield)
    temperature: float = 0.0  # Langevin relaxation (hopfield)
    clip: bool = True  # eb: keep states in [0, 1] (the seed's training setting)
    continual: bool = False  # C-EP: update the weights at every nudged step (eb, p, p-conv, vf; vf + continual = C-VF)
    channels: list[int] = field(default_factory=lambda: [32, 64])  # p-conv: feature maps per convolution, from the input
    kernel: int = 5  # p-conv: convolution size (no padding, stride 1)
    pool: int = 2  # p-conv: max-pool size and stride
    angle: float = 0.0  # vf: initial angle between forward and backward weights, degrees
    init_scale: float = 1.0  # seed models: Glorot bound x this (p-conv at 1.0 starts with saturated outputs)

    KINDS = ("circuit", "hopfield", "eb", "p", "p-conv", "vf")

    def n_layers(self, circuit_layers: str) -> int:
        """Weight layers, which take one learning rate each."""
        from ..circuit import parse_layers

        n = len(parse_layers(circuit_layers if self.kind == "circuit" else self.layers)) - 1
        return n + len(self.channels) if self.kind == "p-conv" else n


@dataclass
class DeviceConfig:
    """The ``[device]`` table: a preset, optional field overrides, and whether training updates
    go through the devices (in the loop) or the devices only matter when deployed."""
    preset: str = "ideal"
    in_the_loop: bool = False
    seed: int = 0  # device realisation
    settings: dict = field(default_factory=dict)  # DeviceModel fields replacing the preset's

    @classmethod
    def from_table(cls, table: dict) -> "DeviceConfig":
        table = dict(table)
        own = {k: table.pop(k) for k in ("preset", "in_the_loop", "seed") if k in table}
        settings = {**table.pop("settings", {}), **table}
        cfg = cls(**own, settings=settings)
        cfg.model()  # validates
        return cfg

    def model(self):
        from ..devices import DeviceModel

        return DeviceModel.build(self.preset, **self.settings)


@dataclass
class Config:
    name: str = "run"
    data: DataConfig = field(default_factory=DataConfig)
    circuit: CircuitConfig = field(default_factory=CircuitConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    device: DeviceConfig = field(default_factory=DeviceConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    expected: str = ""  # the result and time the config is expected to give (documentation)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict) -> "Config":
        sections = {"data": DataConfig, "circuit": CircuitConfig, "train": TrainConfig, "model": ModelConfig}
        unknown = set(raw) - set(sections) - {"name", "expected", "device"}
        if unknown:
            raise ValueError(f"unknown config section(s): {sorted(unknown)}")
        kwargs = {k: raw[k] for k in ("name", "expected") if k in raw}
        for key, kind in sections.items():
            part = dict(raw.get(key, {}))
            names = {f.name for f in dataclasses.fields(kind)}
            bad = set(part) - names
            if bad:
                raise ValueError(f"[{key}]: unknown setting(s) {sorted(bad)}")
            for f in dataclasses.fields(kind):
                if f.name in part and isinstance(part[f.name], list) and "tuple" in str(f.type):
                    part[f.name] = tuple(part[f.name])
            kwargs[key] = kind(**part)
        kwargs["device"] = DeviceConfig.from_table(raw.get("device", {}))
        cfg = cls(**kwargs)
        cfg.validate()
        return cfg

    @classmethod
    def load(cls, path: str | Path) -> "Config":
        path = Path(path)
        try:
            raw = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"no such config: {path}") from None
        except tomllib.TOMLDecodeError as e:
            raise ValueError(f"{path}: invalid TOML: {e}") from None
        raw.setdefault("name", path.stem)
        return cls.from_dict(raw)

    SCHEDULE = ("epochs", "lr_decay", "lr_decay_from")

    def resumable_with(self, other: "Config") -> "Config":
        """This (checkpointed) config with ``other``'s schedule (epochs, learning-rate decay):
        those may change when a run is extended; anything else would make the resumed run a
        different experiment, so it is refused."""
        mine, theirs = self.to_dict(), other.to_dict()
        diffs = [f"{sec}.{k}" for sec in ("data", "circuit", "train", "device", "model") for k in mine[sec]
                 if mine[sec][k] != theirs[sec][k] and not (sec == "train" and k in self.SCHEDULE)]
        if diffs:
            raise ValueError(f"the config differs from the checkpoint's in {', '.join(diffs)}; "
                             "only train.epochs/lr_decay/lr_decay_from may change on --resume")
        merged = dataclasses.replace(self, train=dataclasses.replace(
            self.train, **{k: getattr(other.train, k) for k in self.SCHEDULE}))
        merged.validate()
        return merged

    def validate(self) -> None:
        t = self.train
        if t.optimizer not in ("sgd", "adam"):
            raise ValueError(f"train.optimizer must be sgd or adam, not {t.optimizer!r}")
        if t.nudging not in ("positive", "centered", "random"):
            raise ValueError(f"train.nudging must be positive, centered or random, not {t.nudging!r}")
        if t.dtype not in ("float32", "float64"):
            raise ValueError("train.dtype must be float32 or float64")
        if not (0 < t.lr_decay <= 1) or t.lr_decay_from < 0:
            raise ValueError("train.lr_decay must be in (0, 1] and train.lr_decay_from >= 0")
        if not (0 <= t.g_min < t.g_max) or t.beta <= 0 or t.epochs < 0 or self.data.batch_size < 1:
            raise ValueError("need 0 <= g_min < g_max, beta > 0, epochs >= 0, batch_size >= 1")

        m = self.model
        if m.kind not in ModelConfig.KINDS:
            raise ValueError(f"model.kind must be one of {', '.join(ModelConfig.KINDS)}, not {m.kind!r}")
        if m.kind != "circuit" and self.device.in_the_loop:
            raise ValueError("device models apply to circuits only (model.kind = 'circuit')")
        if m.free_steps < 1 or m.nudged_steps < 1 or m.eps <= 0 or m.temperature < 0:
            raise ValueError("model: need free_steps, nudged_steps >= 1, eps > 0, temperature >= 0")
        if m.kind == "p-conv" and (not m.channels or min(m.channels) < 1 or m.kernel < 1 or m.pool < 1):
            raise ValueError("model: p-conv needs channels (each >= 1), kernel >= 1 and pool >= 1")
        if m.continual and m.kind in ("circuit", "hopfield"):
            raise ValueError("model.continual (C-EP) applies to the discrete-time models: eb, p, p-conv, vf")
        if m.continual and t.nudging == "centered":
            raise ValueError("model.continual nudges one way: set train.nudging to positive or random")
        if m.init_scale <= 0:
            raise ValueError(f"model.init_scale must be > 0, not {m.init_scale}")
        if not 0 <= m.angle <= 180:
            raise ValueError(f"model.angle must be in [0, 180] degrees, not {m.angle}")
        n_layers = m.n_layers(self.circuit.layers)
        if len(t.lr) not in (1, n_layers):
            raise ValueError(f"train.lr: give one learning rate or one per layer ({n_layers})")
