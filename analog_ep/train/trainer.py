"""EP training of a layered analog circuit in the emulator, with checkpoints that resume
exactly, per-epoch metrics, and plots."""
from __future__ import annotations

import csv
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..circuit import DiodeModel, layered, parse_layers
from ..circuit.ir import Circuit
from ..data import Dataset, load_dataset
from ..emulator import compile_circuit, settle
from ..emulator.ep import ep_gradient
from ..devices import DeviceArray, DeviceModel
from .config import Config
from .distributed import Dist

CHECKPOINT = "checkpoint.pt"


class TrainingError(RuntimeError):
    """Training cannot go on (NaN, divergence); the last good checkpoint is kept."""


def build_circuit(cfg: Config) -> Circuit:
    c = cfg.circuit
    diode = None if c.diode.strip().lower() == "none" else DiodeModel.parse(c.diode)
    return layered(c.layers, seed=c.seed, amplifier_gain=c.amplifier_gain, diode=diode, clamp=tuple(c.clamp),
                   g_init=tuple(c.g_init), bias=c.bias, inputs=np.zeros(parse_layers(c.layers)[0]))


def targets(cfg: Config, labels: torch.Tensor, n_out: int, dtype) -> torch.Tensor:
    low, high = cfg.train.target
    y = torch.full((labels.shape[0], n_out), low, dtype=dtype)
    y[torch.arange(labels.shape[0]), labels] = high
    return y


def layer_of(key: str) -> int:
    """Layer index (1-based) of a trainable key such as 'g:w2p' or 'g:b1n'."""
    return int(key[3:-1])


@dataclass
class Metrics:
    epoch: int
    train_loss: float
    train_error: float
    val_error: float
    seconds: float
    mean_sweeps: float


class Trainer:
    def __init__(self, cfg: Config, device: str = "cpu", out: Path | None = None, data: Dataset | None = None,
                 dist: Dist | None = None):
        self.cfg = cfg
        self.dist = dist or Dist()
        self.device = torch.device(device)
        self.dtype = torch.float32 if cfg.train.dtype == "float32" else torch.float64
        self.out = Path(out) if out is not None else None
        self._data = data
        torch.manual_seed(cfg.train.seed)
        self.devices: DeviceArray | None = None
        self.build()
        groups = [dict(params=[self.params[k]], lr=self.lr_of(k), name=k) for k in self.keys]
        t = cfg.train
        if t.optimizer == "adam":
            self.opt = torch.optim.Adam(groups)
        else:
            self.opt = torch.optim.SGD(groups, momentum=t.momentum)
        self.gen = torch.Generator().manual_seed(t.seed)
        self.epoch = 0
        self.history: list[Metrics] = []
        self.project()
        if cfg.device.in_the_loop:
            self.use_devices(cfg.device.model(), cfg.device.seed)

    def build(self) -> None:
        """The network: sets ``params`` (trainable tensors by key), ``keys``, ``n_in``, ``n_out``.
        Here the circuit of ``[circuit]``; the seed papers' models override this."""
        self.circuit = build_circuit(self.cfg)
        self.cc = compile_circuit(self.circuit, dtype=self.dtype, device=self.device)
        self.params = self.cc.params
        self.keys = list(self.cc.trainable)
        self.n_in = parse_layers(self.cfg.circuit.layers)[0]
        self.n_out = len(self.cc.outputs)

    def summary(self) -> str:
        return self.circuit.summary()

    def layer_of(self, key: str) -> int:
        """Layer (1-based from the input side) of a trainable key, for per-layer learning rates."""
        return layer_of(key)

    def use_devices(self, model: DeviceModel, seed: int) -> DeviceArray:
        """Program the present conductances into a fresh realisation of ``model``; from then on
        every settle reads through it and every update writes through it."""
        self.devices = DeviceArray(model, self.cc, self.keys, self.cfg.train.g_max, seed=seed)
        with torch.no_grad():
            for k in self.keys:
                self.cc.params[k].copy_(self.devices.program(k, self.cc.params[k]))
        return self.devices

    def lr_of(self, key: str, epoch: int = 0) -> float:
        """Learning rate of a parameter in a (0-based) epoch: a function of the epoch alone, so a
        resumed run follows the schedule exactly."""
        t = self.cfg.train
        base = t.lr[0] if len(t.lr) == 1 else t.lr[self.layer_of(key) - 1]
        return base * t.lr_decay ** max(0, epoch - t.lr_decay_from)

    @property
    def data(self) -> Dataset:
        """The dataset, loaded on first use (exporting a checkpoint needs none)."""
        if self._data is None:
            self._data = load_dataset(self.cfg.data.dataset)
        if self.n_in != self._data.n_features:
            raise ValueError(f"the network has {self.n_in} inputs, dataset {self._data.name} has "
                             f"{self._data.n_features} features")
        return self._data

    # ------------------------------------------------------------------ state
    def project(self) -> None:
        """Conductances stay in [g_min, g_max] after every update, as devices do."""
        with torch.no_grad():
            for k in self.keys:
                self.cc.params[k].clamp_(self.cfg.train.g_min, self.cfg.train.g_max)

    def state(self) -> dict:
        return dict(config=self.cfg.to_dict(), epoch=self.epoch,
                    params={k: self.params[k].detach().cpu().clone() for k in self.keys},
                    optimizer=self.opt.state_dict(), rng=self.gen.get_state(),
                    history=[m.__dict__ for m in self.history],
                    **({} if self.devices is None else dict(devices=self.devices.state_dict())))

    def load_state(self, state: dict) -> None:
        with torch.no_grad():
            for k in self.keys:
                self.params[k].copy_(state["params"][k].to(self.device, self.dtype))
        if "optimizer" in state:  # a packed (pretrained) checkpoint has weights only
            self.opt.load_state_dict(state["optimizer"])
            self.gen.set_state(state["rng"])
            if self.devices is not None:  # checkpoints before the noise process saved the generator alone
                self.devices.load_state_dict(state.get("devices") or dict(gen=state["device_rng"], time=0.0, noise=None))
        self.epoch = int(state["epoch"])
        self.history = [Metrics(**m) for m in state["history"]]

    def pack(self, path: Path, half: bool = False) -> Path:
        """A small checkpoint for distribution: config, history and conductances (float16 with
        ``half``), without optimizer or RNG state — it evaluates and exports, but cannot resume."""
        state = self.state()
        for k in ("optimizer", "rng", "devices"):
            state.pop(k, None)
        if half:
            state["params"] = {k: v.half() for k, v in state["params"].items()}
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(state, path)
        return path

    @property
    def writes(self) -> bool:
        """Whether this process writes the run directory (rank 0 of a distributed run)."""
        return self.out is not None and self.dist.is_main

    def save(self) -> Path:
        """Write the checkpoint atomically (a kill mid-write leaves the previous one)."""
        assert self.writes
        self.out.mkdir(parents=True, exist_ok=True)
        tmp = self.out / (CHECKPOINT + ".tmp")
        torch.save(self.state(), tmp)
        tmp.replace(self.out / CHECKPOINT)
        return self.out / CHECKPOINT

    # ------------------------------------------------------------------ EP
    def _settle_kw(self) -> dict:
        kw = dict(rtol=self.cfg.train.rtol, max_iters=self.cfg.train.max_iters)
        return kw if self.devices is None else {**kw, **self.devices.settle_kw()}

    def _view(self):
        return self.cc if self.devices is None else self.devices.view()

    def _measure(self, s: torch.Tensor) -> torch.Tensor:
        return s if self.devices is None else self.devices.measure(s)

    def _x(self, x) -> torch.Tensor:
        """A batch of rows (numpy or torch) as a tensor on the trainer's device and dtype."""
        return torch.as_tensor(np.asarray(x) if not torch.is_tensor(x) else x).to(self.device, self.dtype)

    def sources(self, x) -> torch.Tensor:
        """Source voltages for a batch of pixel rows: pixel 1 -> circuit.input_voltage volts."""
        return self.cc.inputs_to_sources(self._x(x) * self.cfg.circuit.input_voltage)

    def _outputs(self, res) -> torch.Tensor:
        """The output voltages of a settle as the read-out measures them."""
        return res.cc.voltages(self._measure(res.s), res.u)[:, res.cc.outputs]

    def ep(self, x: torch.Tensor, labels: torch.Tensor, sign: torch.Tensor | None, idx: torch.Tensor | None):
        """EP on this rank's samples: (gradients by key, summed loss, wrong count, free-phase
        iterations). The circuit: free and nudged settles through the devices, if any."""
        u = self.sources(x)
        y = targets(self.cfg, labels, self.n_out, self.dtype).to(self.device)
        ep = ep_gradient(self.cc, u, y, self.cfg.train.beta, mode=self.cfg.train.nudging, keys=self.keys,
                         sign=sign, view=self._view, measure=self._measure, **self._settle_kw())
        wrong = (self._outputs(ep.free).argmax(1).cpu() != labels).sum().to(self.dtype)
        return ep.grads, ep.loss.sum().detach().cpu(), wrong, ep.free.iterations

    def step(self, x: torch.Tensor, labels: torch.Tensor, idx: torch.Tensor | None = None) -> tuple[float, float, int]:
        """One EP update on a (global) minibatch (``idx``: the examples' indices in the training
        set); returns (mean loss, error rate, free-phase iterations). In a distributed run this
        rank computes its shard and the gradients are summed."""
        B = len(labels)
        sign = torch.randint(0, 2, (B,), generator=self.gen) * 2 - 1 if self.cfg.train.nudging == "random" else None
        mine = self.dist.shard(B)
        grads, loss, wrong, iterations = self.ep(x[mine], labels[mine], None if sign is None else sign[mine],
                                                 None if idx is None else idx[mine])
        grads = [grads[k] for k in self.keys]
        if self.dist.active:  # shard means -> global batch mean
            b = len(labels[mine])
            *grads, loss, wrong = self.dist.sum([g * (b / B) for g in grads] + [loss.to(self.device), wrong.to(self.device)])
        for k, g in zip(self.keys, grads):
            if not bool(torch.isfinite(g).all()):
                raise TrainingError(f"non-finite EP gradient for {k}")
            self.params[k].grad = g
        if self.devices is None:
            self.opt.step()
            self.project()
        else:  # the optimiser proposes, the devices dispose
            before = [self.params[k].detach().clone() for k in self.keys]
            self.opt.step()
            with torch.no_grad():
                for k, g0 in zip(self.keys, before):
                    self.params[k].copy_(self.devices.update(k, g0, self.params[k]))
        return float(loss) / B, float(wrong) / B, iterations

    def predict(self, x: np.ndarray | torch.Tensor, batch: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Output voltages (n, n_out) and predicted classes of the free phase."""
        batch = batch or self.cfg.train.eval_batch
        outs = []
        for i in range(0, len(x), batch):
            outs.append(self._outputs(settle(self._view(), self.sources(x[i:i + batch]), **self._settle_kw())).cpu())
        V = torch.cat(outs)
        return V, V.argmax(1)

    def error(self, x, y) -> float:
        """Classification error on (x, y); a distributed run splits the images over the ranks."""
        mine = self.dist.shard(len(y))
        _, pred = self.predict(x[mine])
        wrong = (pred != torch.as_tensor(y[mine])).sum().to(self.dtype).to(self.device)
        return float(self.dist.sum([wrong])[0]) / len(y)

    def deployed_errors(self, model: DeviceModel, x, y, realisations: int = 5, seed: int = 0) -> list[float]:
        """Error on (x, y) of the present conductances programmed into ``realisations`` fresh
        realisations of ``model`` (train ideal, deploy on devices); the trainer is left as it was."""
        trained = {k: self.cc.params[k].detach().clone() for k in self.keys}
        own = self.devices
        try:
            errors = []
            for r in range(realisations):
                self.use_devices(model, seed + r)
                errors.append(self.error(x, y))
            return errors
        finally:
            with torch.no_grad():
                for k in self.keys:
                    self.cc.params[k].copy_(trained[k])
            self.devices = own

    # ------------------------------------------------------------------ loop
    def fit(self, epochs: int | None = None, progress: bool = True) -> list[Metrics]:
        from tqdm import tqdm

        total = self.cfg.train.epochs if epochs is None else epochs
        d, bs = self.data, self.cfg.data.batch_size
        n = len(d.x_train) if self.cfg.data.train_subset is None else min(self.cfg.data.train_subset, len(d.x_train))
        x_all, y_all = torch.as_tensor(d.x_train[:n]), torch.as_tensor(d.y_train[:n])
        while self.epoch < total:
            t0 = time.perf_counter()
            for group in self.opt.param_groups:
                group["lr"] = self.lr_of(group["name"], self.epoch)
            perm = torch.randperm(n, generator=self.gen)
            losses, errs, sweeps = [], [], []
            bar = tqdm(range(0, n, bs), desc=f"epoch {self.epoch + 1}/{total}", leave=False,
                       disable=not (progress and self.dist.is_main))
            for i in bar:
                idx = perm[i:i + bs]
                loss, err, it = self.step(x_all[idx], y_all[idx], idx)
                if not math.isfinite(loss) or loss > 1e6:
                    raise TrainingError(f"loss diverged ({loss}) in epoch {self.epoch + 1}; "
                                        f"the last good checkpoint is kept in {self.out}")
                losses.append(loss), errs.append(err), sweeps.append(it)
                bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}", err=f"{np.mean(errs[-50:]):.3f}")
            self.epoch += 1
            m = Metrics(self.epoch, float(np.mean(losses)), float(np.mean(errs)), self.error(d.x_val, d.y_val),
                        time.perf_counter() - t0, float(np.mean(sweeps)))
            self.history.append(m)
            if self.dist.is_main and (progress or self.out is not None):  # a run directory gets a log line per epoch
                print(f"epoch {m.epoch}: train loss {m.train_loss:.4f}, train error {m.train_error:.4f}, "
                      f"val error {m.val_error:.4f}, {m.seconds:.1f} s", flush=True)
            if self.writes:
                self.save()
                self.write_metrics()
        return self.history

    def write_metrics(self) -> None:
        rows = [m.__dict__ for m in self.history]
        (self.out / "metrics.json").write_text(json.dumps(rows, indent=1))
        with (self.out / "metrics.csv").open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)


def make_trainer(cfg: Config, **kw) -> Trainer:
    """The trainer for ``cfg``: the circuit, or one of the seed papers' models ([model] kind)."""
    if cfg.model.kind == "circuit":
        return Trainer(cfg, **kw)
    from ..models.train import SeedTrainer

    return SeedTrainer(cfg, **kw)


def load_checkpoint(path: str | Path, device: str = "cpu", data: Dataset | None = None,
                    dist: Dist | None = None) -> Trainer:
    """A Trainer restored from a checkpoint (loaded with ``weights_only=True``: tensors and
    plain Python values only, never arbitrary pickled objects)."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    cfg = Config.from_dict(state["config"])
    trainer = make_trainer(cfg, device=device, out=path.parent, data=data, dist=dist)
    trainer.load_state(state)
    return trainer
