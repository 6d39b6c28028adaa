"""Training the seed papers' models with the circuit trainer's loop, optimiser, checkpoints,
metrics and data-parallel ranks: only the network (``build``), its EP phases (``ep``) and its
prediction differ.

* ``hopfield`` (seed 000): free phase of ``free_steps`` clipped ε-steps (from the example's
  persistent particle when ``persistent``), nudged phase of ``nudged_steps`` from the free state,
  Δθ ∝ −(1/β)(∂F/∂θ(s^β) − ∂F/∂θ(s⁰)); optional Langevin relaxation (``temperature``).
* ``eb`` / ``p`` / ``p-conv`` (seed 003): T = ``free_steps`` free steps from zero, K =
  ``nudged_steps`` nudged steps, Δθ = (1/β')(∂Φ/∂θ(s^β_K) − ∂Φ/∂θ(s_T)); ``vf`` the same with
  asymmetric weights and the vector-field rule. With ``continual`` (C-EP, or C-VF for ``vf``;
  seed 002) the weights move at every nudged step by the optimiser with that step's increment.

``train.nudging``: positive (+β), random (a ±β per sample, the C-VF paper's "random β") or
centered (a +β and a −β phase, Δθ from their difference; not with ``continual``).

Persistent particles live in memory only: a resumed run restarts them from zero.
"""
from __future__ import annotations

import math

import torch

from ..circuit import parse_layers
from ..train.trainer import Trainer, targets
from .discrete import ConvPrototypical, EnergyBased, Prototypical, VectorField, layered_pairs
from .hopfield import HopfieldNet, ParticleCache


class SeedTrainer(Trainer):
    def build(self) -> None:
        m = self.cfg.model
        if m.continual and self.dist.active:  # its per-step updates would need an all-reduce each
            raise ValueError("C-EP (model.continual) runs in one process only, not under torchrun")
        sizes = parse_layers(m.layers)
        self.n_in, self.n_out = sizes[0], sizes[-1]
        seed = self.cfg.train.seed
        if m.kind == "hopfield":
            self.net = HopfieldNet(sizes, rho=m.activation, dtype=self.dtype, device=self.device, seed=seed,
                                   init_scale=m.init_scale)
        elif m.kind == "p-conv":
            side = math.isqrt(self.n_in)
            if side * side != self.n_in:
                raise ValueError(f"p-conv needs a square single-channel image; {self.n_in} inputs are not one")
            self.net = ConvPrototypical((1, side, side), m.channels, sizes[1:], kernel=m.kernel, pool=m.pool,
                                        act=m.activation, dtype=self.dtype, device=self.device, seed=seed,
                                        init_scale=m.init_scale)
        else:  # seed 003 order: output first, the input last
            dims = sizes[1:][::-1]
            kind, kw = {"eb": (EnergyBased, dict(eps=m.eps, clip=m.clip)), "p": (Prototypical, {}),
                        "vf": (VectorField, dict(angle=m.angle))}[m.kind]
            self.net = kind(dims, self.n_in, layered_pairs(len(dims)), act=m.activation, dtype=self.dtype,
                            device=self.device, seed=seed, init_scale=m.init_scale, **kw)
        self.params = self.net.params
        self.keys = list(self.params)
        self.particles = None

    @property
    def cc(self):
        raise ValueError(f"a {self.cfg.model.kind!r} model is not a circuit: it has no netlist, SPICE check "
                         "or device model")

    def summary(self) -> str:
        m = self.cfg.model
        shape = f"conv {m.channels} ({m.kernel}x{m.kernel}, pool {m.pool}) then {m.layers}" if m.kind == "p-conv" else m.layers
        extra = f", angle {m.angle:g} deg" if m.kind == "vf" else ""
        return (f"{m.kind} model {shape} ({m.activation}, T={m.free_steps}, K={m.nudged_steps}"
                f"{', continual' if m.continual else ''}{extra})")

    def layer_of(self, key: str) -> int:
        """Layer from the input side: hopfield W1/b1 = first; seed-003 W{i}_{i+1} counts from the
        output, so the input-side weight comes first here too."""
        if self.cfg.model.kind == "hopfield":
            return int(key[1:])
        return len(self.net.shapes) - int(key[1:].split("_")[0])

    def project(self) -> None:
        """Weights are unconstrained in the seed models."""

    def _free(self, x, idx=None, training: bool = True):
        """Free phase. Training: from the examples' particles if persistent, with Langevin noise
        if a temperature is set; prediction: from zero, noiseless, ``eval_steps`` steps."""
        m, net = self.cfg.model, self.net
        steps = m.free_steps if training or not m.eval_steps else m.eval_steps
        if m.kind != "hopfield":
            with torch.no_grad():
                return net.relax(x, net.zeros(len(x)), steps)
        persistent = training and m.persistent and idx is not None
        if persistent and self.particles is None:
            self.particles = ParticleCache(net, len(self.data.x_train))
        start = self.particles.get(idx) if persistent else net.zeros(len(x))
        s = net.relax(x, start, steps, m.eps, temperature=m.temperature if training else 0.0, generator=self.gen)
        if persistent:
            self.particles.put(idx, s)
        return s

    def _output(self, s) -> torch.Tensor:
        return s[-1] if self.cfg.model.kind == "hopfield" else s[0]

    def _nudged(self, x, s, beta, y):
        """The nudged phase from state s with strength ``beta`` (a number or a column)."""
        m, net = self.cfg.model, self.net
        if m.kind == "hopfield":
            return net.relax(x, s, m.nudged_steps, m.eps, beta=beta, y=y, temperature=m.temperature, generator=self.gen)
        with torch.no_grad():
            return net.relax(x, s, m.nudged_steps, beta, y)

    def ep(self, x, labels, sign, idx):
        m, net, beta, mode = self.cfg.model, self.net, self.cfg.train.beta, self.cfg.train.nudging
        x = self._x(x)
        y = targets(self.cfg, labels, self.n_out, self.dtype).to(self.device)
        s0 = self._free(x, idx)
        out = self._output(s0)
        loss = (0.5 * ((out - y) ** 2).sum()).detach().cpu()
        wrong = (out.argmax(1).cpu() != labels).sum().to(self.dtype)
        scale = beta * net.nudge_scale * len(x)
        # signed nudging: each sample's increment ÷ its own ±β, i.e. weighted by its sign
        w = None if sign is None else sign.to(self.device, self.dtype)
        b = beta if w is None else beta * w.unsqueeze(1)
        grad = lambda inc, k=1: {key: -inc[key] / (k * scale) for key in self.keys}
        if mode == "centered":
            return grad(net.update(x, self._nudged(x, s0, -beta, y), self._nudged(x, s0, beta, y)), 2), loss, wrong, m.free_steps
        if not m.continual:
            return grad(net.update(x, s0, self._nudged(x, s0, b, y), w)), loss, wrong, m.free_steps
        with torch.no_grad():  # C-EP / C-VF: every step's increment is applied at once, the last by the caller
            s = s0
            for t in range(m.nudged_steps):
                nxt = net.step(x, s, b, y)
                inc = grad(net.update(x, s, nxt, w))
                if t < m.nudged_steps - 1:
                    for key in self.keys:
                        self.params[key].grad = inc[key]
                    self.opt.step()
                s = nxt
        return inc, loss, wrong, m.free_steps

    def predict(self, x, batch: int | None = None):
        batch = batch or self.cfg.train.eval_batch
        outs = [self._output(self._free(self._x(x[i:i + batch]), training=False)).detach().cpu()
                for i in range(0, len(x), batch)]
        V = torch.cat(outs)
        return V, V.argmax(1)
