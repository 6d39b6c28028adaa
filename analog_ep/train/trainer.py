"""One EP trainer for any :class:`~analog_ep.models.EPModel`: optimiser and per-layer learning
rates, the learning-rate schedule, the data-parallel step, the loop, metrics and checkpoints
that resume exactly, and the guards that stop a run going wrong (NaN, divergence, collapse to
chance). It does not know which model it trains."""
from __future__ import annotations

import csv
import json
import math
import time
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import torch

from ..data import ArrayLoader, Dataset, batches, load_dataset
from ..models import EPModel, model_from_config
from .config import Config
from .distributed import Dist
from .files import atomic_write, write_text
from .logs import EpochLogger, Metrics, TensorBoardLogger
from .progress import progress_bar

CHECKPOINT = "checkpoint.pt"
BEST = "checkpoint_best.pt"  # the epoch with the lowest validation error so far, as a full checkpoint


class TrainingError(RuntimeError):
    """Training cannot go on (NaN, divergence, collapse to chance); the last good checkpoint is kept."""


class CheckpointError(ValueError):
    """A file is not a checkpoint, or does not fit the model its config describes."""


class Trainer:
    """Trains ``model`` (default: the one ``cfg`` describes) with the ``[train]`` settings of
    ``cfg``; ``out`` is the run directory (checkpoint, metrics), ``data`` the built-in dataset
    (loaded from ``cfg.data`` on first use), ``dist`` the data-parallel ranks. With
    ``initialise`` the parameters start from ``[train] init_from``'s checkpoint, if the config
    names one (fine-tuning); :func:`load_checkpoint` passes False, as it restores its own.

    A run that had learnt and then sits within ``COLLAPSE_MARGIN`` of chance validation error
    (1 − 1/classes) for ``COLLAPSE_EPOCHS`` epochs in a row has collapsed: training stops with
    :class:`TrainingError`, and the checkpoint is that of the last epoch before it (a collapsed
    epoch is not saved, unless it is the run's last)."""

    COLLAPSE_MARGIN = 0.05  # validation error (a fraction) this close to chance counts as chance
    COLLAPSE_EPOCHS = 2

    def __init__(self, cfg: Config, device: str = "cpu", out: Path | None = None, data: Dataset | None = None,
                 dist: Dist | None = None, model: EPModel | None = None, initialise: bool = True):
        self.cfg = cfg
        self.dist = dist or Dist()
        self.device = torch.device(device)
        self.out = Path(out) if out is not None else None
        self._data = data
        torch.manual_seed(cfg.train.seed)
        self.model = model_from_config(cfg.to_dict(), device=self.device) if model is None else model
        if self.model.continual and self.dist.active:  # per-step updates would need an all-reduce each
            raise ValueError("C-EP (model.continual) runs in one process only, not under torchrun")
        self.dtype = self.model.dtype
        self.params = self.model.trainable()
        self.keys = list(self.params)
        groups = [dict(params=[self.params[k]], lr=self.lr_of(k), name=k) for k in self.keys]
        t = cfg.train
        if t.optimizer == "adam":
            # fused: one kernel per tensor instead of a dozen passes (torch's CPU and CUDA kernels)
            self.opt = torch.optim.Adam(groups, weight_decay=t.weight_decay, fused=True)
        else:
            self.opt = torch.optim.SGD(groups, momentum=t.momentum, weight_decay=t.weight_decay)
        self.gen = torch.Generator().manual_seed(t.seed)
        self.epoch = 0
        self.saved_epoch: int | None = None  # epoch of the checkpoint in ``out``, if there is one
        self.history: list[Metrics] = []
        if initialise and t.init_from is not None:  # fine-tuning (a restored checkpoint brings its own parameters)
            try:
                self.model.start_from(read_checkpoint(t.init_from)[1]["params"])
            except (ValueError, FileNotFoundError) as e:  # CheckpointError is a ValueError
                raise type(e)(f"[train] init_from {t.init_from}: {e}") from None
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
        if self.cfg.data.val_size is not None:  # idempotent: a split dataset has val_size validation images
            self._data = self._data.with_val_size(self.cfg.data.val_size)
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
        """Restore :meth:`state` (or a packed checkpoint's weights); ValueError if its parameters
        do not fit the model (keys, shapes) or are not finite."""
        self.model.load_trainable(state["params"])
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
        return atomic_write(path, lambda tmp: torch.save(state, tmp))

    @property
    def writes(self) -> bool:
        """Whether this process writes the run directory (rank 0 of a distributed run)."""
        return self.out is not None and self.dist.is_main

    def save(self) -> Path:
        """Write the checkpoint atomically (a kill mid-write leaves the previous one), and the
        same state to :data:`BEST` when the latest epoch's validation error is below every
        earlier epoch's (the first epoch to reach the run's lowest keeps it). ``BEST`` is a
        full checkpoint: it evaluates, exports, and resumes from that epoch."""
        assert self.writes
        state = self.state()
        path = atomic_write(self.out / CHECKPOINT, lambda tmp: torch.save(state, tmp))
        if self.history and self.history[-1].val_error < min((h.val_error for h in self.history[:-1]), default=math.inf):
            atomic_write(self.out / BEST, lambda tmp: torch.save(state, tmp))
        self.saved_epoch = self.epoch
        return path

    def _stop(self, reason: str) -> TrainingError:
        """The error that stops training: the reason and what the run directory keeps."""
        if not self.writes:
            return TrainingError(f"{reason}; no run directory is written")
        if self.saved_epoch is None:
            return TrainingError(f"{reason}; no checkpoint was written in {self.out}")
        return TrainingError(f"{reason}; the last good checkpoint (epoch {self.saved_epoch}) is kept in "
                             f"{self.out / CHECKPOINT}")

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
        # a sum is finite unless an element is not (or it overflows: then look at each); one
        # sync for all of them
        if grads and not bool(torch.isfinite(torch.stack([g.sum() for g in grads])).all()):
            for k, g in zip(self.keys, grads):
                if not bool(torch.isfinite(g).all()):
                    raise self._stop(f"non-finite EP gradient for {k} in epoch {self.epoch + 1}")
        for k, g in zip(self.keys, grads):
            self.params[k].grad = g
        self.model.optimizer_step(self.opt)
        return float(loss) / B, float(wrong) / B, res.iterations

    def predict(self, x, batch: int | None = None,
                on_batch: Callable[[int], None] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Outputs (n, n_out) and predicted classes of the free phase, in batches; ``on_batch``
        is called with the number of examples of each batch done (e.g. a progress bar's update)."""
        batch = batch or self.cfg.train.eval_batch
        outputs = []
        for i in range(0, len(x), batch):
            outputs.append(self.model.predict(x[i:i + batch]).cpu())
            if on_batch is not None:
                on_batch(len(outputs[-1]))
        V = torch.cat(outputs)
        return V, V.argmax(1)

    def error(self, x, y, on_batch: Callable[[int], None] | None = None) -> float:
        """Classification error on (x, y); a distributed run splits the images over the ranks.
        ``on_batch``: as in :meth:`predict` (this rank's examples)."""
        mine = self.dist.shard(len(y))
        _, pred = self.predict(x[mine], on_batch=on_batch)
        wrong = (pred != torch.as_tensor(y[mine])).sum().to(self.dtype).to(self.device)
        return float(self.dist.sum([wrong])[0]) / len(y)

    # ------------------------------------------------------------------ loop
    def config_loggers(self) -> list[EpochLogger]:
        """The epoch loggers the ``[log]`` table asks for (on the main rank only): TensorBoard in
        ``tensorboard_dir``, or the run directory's ``tensorboard/``; ValueError if it has
        neither, MissingDependency if tensorboard is not installed."""
        log = self.cfg.log
        if not (log.tensorboard and self.dist.is_main):
            return []
        if not log.tensorboard_dir and self.out is None:
            raise ValueError("[log] tensorboard: set [log] tensorboard_dir, or give the trainer a run directory")
        return [TensorBoardLogger(log.tensorboard_dir or self.out / "tensorboard")]

    def epoch_scalars(self) -> dict[str, float]:
        """What loggers record besides :class:`Metrics`: β (the model's nudge), each parameter
        group's learning rate, and the model's own :meth:`~analog_ep.models.EPModel.statistics`
        (tags ``ep/beta``, ``lr/<key>``, ``model/<name>``)."""
        return {"ep/beta": float(self.model.beta),
                **{f"lr/{g['name']}": float(g["lr"]) for g in self.opt.param_groups},
                **{f"model/{k}": float(v) for k, v in self.model.statistics().items()}}

    def train_loader(self) -> ArrayLoader:
        """The built-in dataset's training batches as the config asks (batch size, subset, shifts),
        shuffled by the trainer's generator: what :meth:`fit` trains on by default."""
        return ArrayLoader(self.data.x_train, self.data.y_train, self.cfg.data.batch_size, self.gen,
                           limit=self.cfg.data.train_subset, shift=self.cfg.data.shift)

    def fit(self, epochs: int | None = None, progress: bool = True, train: Iterable | None = None,
            val: tuple | None = None, loggers: Sequence[EpochLogger] | None = None) -> list[Metrics]:
        """Train to ``epochs`` (default: the config's). ``train``: any iterable of ``(x, y)`` or
        ``(x, y, idx)`` batches, re-iterated every epoch (default: seeded shuffles of the
        built-in dataset); ``val``: validation arrays ``(x, y)`` (default: the dataset's). The
        progress bar shows only on a terminal; a log gets one line per epoch. ``loggers``: each
        gets every finished epoch (on the main rank) and is closed when fit returns or stops
        (default: those of the ``[log]`` table, :meth:`config_loggers`; ``()`` for none)."""
        total = self.cfg.train.epochs if epochs is None else epochs
        if train is None:
            train = self.train_loader()
        if val is None:
            val = (self.data.x_val, self.data.y_val)
        loggers = self.config_loggers() if loggers is None else list(loggers)
        try:
            self._run(total, progress, train, val, loggers)
        finally:
            for logger in loggers:
                logger.close()
        return self.history

    def _run(self, total: int, progress: bool, train: Iterable, val: tuple, loggers: list[EpochLogger]) -> None:
        """The epochs of :meth:`fit`."""
        show = progress and self.dist.is_main
        while self.epoch < total:
            t0 = time.perf_counter()
            for group in self.opt.param_groups:
                group["lr"] = self.lr_of(group["name"], self.epoch)
            losses, errs, sweeps, times = [], [], [], []
            bar = progress_bar(batches(train), f"epoch {self.epoch + 1}/{total}", show=show,
                               total=len(train) if hasattr(train, "__len__") else None)
            for x, y, idx in bar:
                loss, err, it = self.step(x, y, idx)
                if not math.isfinite(loss) or loss > 1e6:
                    raise self._stop(f"loss diverged ({loss}) in epoch {self.epoch + 1}")
                losses.append(loss), errs.append(err), sweeps.append(it), times.append(self.last_measurement_time)
                bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}", err=f"{np.mean(errs[-50:]):.3f}")
            self.epoch += 1
            m = Metrics(self.epoch, float(np.mean(losses)), float(np.mean(errs)), self.error(*val),
                        time.perf_counter() - t0, float(np.mean(sweeps)), float(np.mean(times)))
            self.history.append(m)
            for logger in loggers if self.dist.is_main else ():
                logger.log_epoch(m, self.model.trainable(), self.epoch_scalars())
            if self.dist.is_main and (progress or self.out is not None):  # a run directory gets a log line per epoch
                print(f"epoch {m.epoch}: train loss {m.train_loss:.4f}, train error {m.train_error:.4f}, "
                      f"val error {m.val_error:.4f}, {m.seconds:.1f} s", flush=True)
            collapsed = self.collapsed_epochs()
            if self.writes:
                if collapsed == 0 or (self.epoch == total and collapsed < self.COLLAPSE_EPOCHS):
                    self.save()
                self.write_metrics()
            if collapsed >= self.COLLAPSE_EPOCHS:
                errors = ", ".join(f"{h.val_error:.3f}" for h in self.history[-collapsed:])
                raise self._stop(f"training collapsed to chance: validation error {errors} in epochs "
                                 f"{self.history[-collapsed].epoch}-{m.epoch} (chance {self.chance:.3f}, best "
                                 f"{min(h.val_error for h in self.history):.3f})")

    @property
    def chance(self) -> float:
        """Error rate of guessing among the model's output classes."""
        return 1 - 1 / self.model.n_out

    def collapsed_epochs(self) -> int:
        """How many of the latest epochs have a validation error within ``COLLAPSE_MARGIN`` of
        chance, all after an epoch that did better (0 if none, or if none ever did better)."""
        at_chance = [h.val_error >= self.chance - self.COLLAPSE_MARGIN for h in self.history]
        better = [i for i, c in enumerate(at_chance) if not c]
        return len(at_chance) - better[-1] - 1 if better else 0

    def write_metrics(self) -> None:
        """metrics.json and metrics.csv: one row per epoch of the history (each file atomic)."""
        rows = [m.__dict__ for m in self.history]
        write_text(self.out / "metrics.json", json.dumps(rows, indent=1))

        def write_csv(tmp: Path) -> None:
            with tmp.open("w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=list(rows[0]))
                w.writeheader()
                w.writerows(rows)

        atomic_write(self.out / "metrics.csv", write_csv)


def _gist(e: BaseException) -> str:
    """The first sentence of an error's message (torch's run to paragraphs)."""
    text = str(e).strip()
    return text.splitlines()[0].split(". ")[0].rstrip(".") if text else type(e).__name__


def read_checkpoint(path: str | Path) -> tuple[Path, dict]:
    """(file, state) of a checkpoint file or run directory, loaded with ``weights_only=True``
    (tensors and plain Python values only, never arbitrary pickled objects); CheckpointError
    if the file is not a checkpoint."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path} is empty, not a checkpoint")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch.load fails in many ways on a file that is not a checkpoint
        raise CheckpointError(f"{path} is not a readable checkpoint ({type(e).__name__}: {_gist(e)})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} is not a checkpoint: it holds a {type(state).__name__}, not a table")
    missing = [k for k in ("config", "epoch", "params", "history") if k not in state]
    if missing:
        raise CheckpointError(f"{path} is not a checkpoint: no {', '.join(missing)}")
    return path, state


def load_checkpoint(path: str | Path, device: str = "cpu", data: Dataset | None = None,
                    dist: Dist | None = None) -> Trainer:
    """A Trainer restored from a checkpoint file or run directory (:func:`read_checkpoint`),
    its config checked (:meth:`Config.from_stored`) and its parameters checked against the
    model the config describes: CheckpointError naming the file and the first misfit. Its run
    directory (where training on writes) is the file's directory where the file is that
    directory's :data:`CHECKPOINT`; from any other file (:data:`BEST`, a copy, a packed
    checkpoint) it has none until ``out`` is set, so that it cannot overwrite the run it came from."""
    path, state = read_checkpoint(path)
    own = path.name == CHECKPOINT
    try:
        cfg = Config.from_stored(state["config"])
        trainer = Trainer(cfg, device=device, out=path.parent if own else None, data=data, dist=dist, initialise=False)
        trainer.load_state(state)
    except (ValueError, TypeError, KeyError, RuntimeError) as e:  # RuntimeError: torch's optimizer/RNG state checks
        raise CheckpointError(f"{path}: {_gist(e)}") from None
    if own:
        trainer.saved_epoch = trainer.epoch
    return trainer
