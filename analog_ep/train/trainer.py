"""One EP trainer for any :class:`~analog_ep.models.EPModel`: optimiser and per-layer learning
rates, the learning-rate schedule, the data-parallel step, the loop, metrics and checkpoints
that resume exactly. It does not know which model it trains."""
from __future__ import annotations

import csv
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import torch

from ..data import ArrayLoader, Dataset, batches, load_dataset
from ..models import EPModel, model_from_config
from .config import Config
from .distributed import Dist

CHECKPOINT = "checkpoint.pt"


class TrainingError(RuntimeError):
    """Training cannot go on (NaN, divergence); the last good checkpoint is kept."""


@dataclass
class Metrics:
    epoch: int
    train_loss: float
    train_error: float
    val_error: float
    seconds: float
    mean_sweeps: float
    measurement_time: float = 0.0  # s per EP step on the hardware's clock (devices' settles and reads)


class Trainer:
    """Trains ``model`` (default: the one ``cfg`` describes) with the ``[train]`` settings of
    ``cfg``; ``out`` is the run directory (checkpoint, metrics), ``data`` the built-in dataset
    (loaded from ``cfg.data`` on first use), ``dist`` the data-parallel ranks."""

    def __init__(self, cfg: Config, device: str = "cpu", out: Path | None = None, data: Dataset | None = None,
                 dist: Dist | None = None, model: EPModel | None = None):
        self.cfg = cfg
        self.dist = dist or Dist()
        self.device = torch.device(device)
        self.out = Path(out) if out is not None else None
        self._data = data
        torch.manual_seed(cfg.train.seed)
        self.model = model_from_config(cfg.to_dict(), device=self.device) if model is None else model
        if getattr(self.model, "continual", False) and self.dist.active:  # per-step updates would need an all-reduce each
            raise ValueError("C-EP (model.continual) runs in one process only, not under torchrun")
        self.dtype = self.model.dtype
        self.params = self.model.trainable()
        self.keys = list(self.params)
        groups = [dict(params=[self.params[k]], lr=self.lr_of(k), name=k) for k in self.keys]
        t = cfg.train
        if t.optimizer == "adam":
            self.opt = torch.optim.Adam(groups)
        else:
            self.opt = torch.optim.SGD(groups, momentum=t.momentum)
        self.gen = torch.Generator().manual_seed(t.seed)
        self.epoch = 0
        self.history: list[Metrics] = []
        self.model.project()

    def summary(self) -> str:
        return self.model.summary()

    def lr_of(self, key: str, epoch: int = 0) -> float:
        """Learning rate of a parameter in a (0-based) epoch: a function of the epoch alone, so a
        resumed run follows the schedule exactly."""
        t = self.cfg.train
        base = t.lr[0] if len(t.lr) == 1 else t.lr[self.model.layer_of(key) - 1]
        return base * t.lr_decay ** max(0, epoch - t.lr_decay_from)

    @property
    def data(self) -> Dataset:
        """The dataset, loaded on first use (exporting a checkpoint needs none)."""
        if self._data is None:
            self._data = load_dataset(self.cfg.data.dataset)
        if self.model.n_in != self._data.n_features:
            raise ValueError(f"the network has {self.model.n_in} inputs, dataset {self._data.name} has "
                             f"{self._data.n_features} features")
        return self._data

    # ------------------------------------------------------------------ state
    def state(self) -> dict:
        return dict(config=self.cfg.to_dict(), epoch=self.epoch,
                    params={k: self.params[k].detach().cpu().clone() for k in self.keys},
                    optimizer=self.opt.state_dict(), rng=self.gen.get_state(),
                    history=[m.__dict__ for m in self.history], **self.model.extra_state())

    def load_state(self, state: dict) -> None:
        with torch.no_grad():
            for k in self.keys:
                self.params[k].copy_(state["params"][k].to(self.device, self.dtype))
        if "optimizer" in state:  # a packed (pretrained) checkpoint has weights only
            self.opt.load_state_dict(state["optimizer"])
            self.gen.set_state(state["rng"])
            self.model.load_extra_state(state)
        self.epoch = int(state["epoch"])
        self.history = [Metrics(**m) for m in state["history"]]

    def pack(self, path: Path, half: bool = False) -> Path:
        """A small checkpoint for distribution: config, history and parameters (float16 with
        ``half``), without optimizer or RNG state — it evaluates and exports, but cannot resume."""
        state = self.state()
        for k in ("optimizer", "rng", *self.model.extra_state()):
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
    def step(self, x, labels: torch.Tensor, idx: torch.Tensor | None = None) -> tuple[float, float, int]:
        """One EP update on a (global) minibatch (``idx``: the examples' indices in the training
        set); returns (mean loss, error rate, free-phase iterations) and keeps the step's
        hardware time in ``last_measurement_time``. In a distributed run this rank computes its
        shard and the gradients are summed."""
        labels = torch.as_tensor(labels)
        B = len(labels)
        sign = torch.randint(0, 2, (B,), generator=self.gen) * 2 - 1 if self.model.mode == "random" else None
        mine = self.dist.shard(B)
        for k in self.keys:
            self.params[k].grad = None
        res = self.model.ep_step(x[mine], labels[mine], sign=None if sign is None else sign[mine],
                                 idx=None if idx is None else idx[mine], generator=self.gen, optimizer=self.opt)
        grads = [self.params[k].grad for k in self.keys]
        self.last_measurement_time = res.measurement_time
        loss = res.loss.sum().cpu()
        wrong = (res.outputs.argmax(1).cpu() != labels[mine]).sum().to(self.dtype)
        if self.dist.active:  # shard means -> global batch mean
            b = len(labels[mine])
            *grads, loss, wrong = self.dist.sum([g * (b / B) for g in grads] + [loss.to(self.device), wrong.to(self.device)])
        for k, g in zip(self.keys, grads):
            if not bool(torch.isfinite(g).all()):
                raise TrainingError(f"non-finite EP gradient for {k}")
            self.params[k].grad = g
        self.model.optimizer_step(self.opt)
        return float(loss) / B, float(wrong) / B, res.iterations

    def predict(self, x, batch: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Outputs (n, n_out) and predicted classes of the free phase, in batches."""
        batch = batch or self.cfg.train.eval_batch
        V = torch.cat([self.model.predict(x[i:i + batch]).cpu() for i in range(0, len(x), batch)])
        return V, V.argmax(1)

    def error(self, x, y) -> float:
        """Classification error on (x, y); a distributed run splits the images over the ranks."""
        mine = self.dist.shard(len(y))
        _, pred = self.predict(x[mine])
        wrong = (pred != torch.as_tensor(y[mine])).sum().to(self.dtype).to(self.device)
        return float(self.dist.sum([wrong])[0]) / len(y)

    # ------------------------------------------------------------------ loop
    def fit(self, epochs: int | None = None, progress: bool = True, train: Iterable | None = None,
            val: tuple | None = None) -> list[Metrics]:
        """Train to ``epochs`` (default: the config's). ``train``: any iterable of ``(x, y)`` or
        ``(x, y, idx)`` batches, re-iterated every epoch (default: seeded shuffles of the
        built-in dataset); ``val``: validation arrays ``(x, y)`` (default: the dataset's). The
        progress bar shows only on a terminal; a log gets one line per epoch."""
        from tqdm import tqdm

        total = self.cfg.train.epochs if epochs is None else epochs
        if train is None:
            train = ArrayLoader(self.data.x_train, self.data.y_train, self.cfg.data.batch_size, self.gen,
                                limit=self.cfg.data.train_subset)
        if val is None:
            val = (self.data.x_val, self.data.y_val)
        bar_on = progress and self.dist.is_main and sys.stderr.isatty()
        while self.epoch < total:
            t0 = time.perf_counter()
            for group in self.opt.param_groups:
                group["lr"] = self.lr_of(group["name"], self.epoch)
            losses, errs, sweeps, times = [], [], [], []
            bar = tqdm(batches(train), desc=f"epoch {self.epoch + 1}/{total}", leave=False, disable=not bar_on,
                       total=len(train) if hasattr(train, "__len__") else None)
            for x, y, idx in bar:
                loss, err, it = self.step(x, y, idx)
                if not math.isfinite(loss) or loss > 1e6:
                    raise TrainingError(f"loss diverged ({loss}) in epoch {self.epoch + 1}; "
                                        f"the last good checkpoint is kept in {self.out}")
                losses.append(loss), errs.append(err), sweeps.append(it), times.append(self.last_measurement_time)
                bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}", err=f"{np.mean(errs[-50:]):.3f}")
            self.epoch += 1
            m = Metrics(self.epoch, float(np.mean(losses)), float(np.mean(errs)), self.error(*val),
                        time.perf_counter() - t0, float(np.mean(sweeps)), float(np.mean(times)))
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
    trainer = Trainer(cfg, device=device, out=path.parent, data=data, dist=dist)
    trainer.load_state(state)
    return trainer
