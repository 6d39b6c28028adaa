"""The seed papers' abstract models behind the :class:`~analog_ep.models.base.EPModel` interface,
one adapter per family, so they train with the same trainer as the circuits.

* :class:`HopfieldEP` (seed 000): free phase of ``free_steps`` clipped ε-steps (from the
  example's persistent particle when ``persistent``), nudged phase of ``nudged_steps`` from the
  free state; optional Langevin relaxation (``temperature``).
* :class:`DiscreteEP` (seeds 002/003): EB, P, P-conv and VF models; T = ``free_steps`` free steps
  from zero, K = ``nudged_steps`` nudged steps. With ``continual`` (C-EP, or C-VF for a VF
  model; seed 002) the weights move at every nudged step by the optimiser.

The EP estimate is :func:`analog_ep.emulator.nudging.ep_estimate`; a model supplies its nudged
phase and its ∂E/∂θ difference (the discrete models' Φ plays −E's part, and their nudge adds
nudge_scale·β, by which their updates are divided). Persistent particles live in memory only: a
resumed run restarts them from zero.
"""
from __future__ import annotations

import math
from typing import Mapping

import torch

from ..circuit import parse_layers
from ..emulator.nudging import ep_estimate
from .base import EPModel, EPStep
from .discrete import ConvPrototypical, DiscreteModel, EnergyBased, Prototypical, VectorField, layered_pairs
from .hopfield import HopfieldNet, ParticleCache

KINDS = ("hopfield", "eb", "p", "p-conv", "vf")


class SeedModel(EPModel):
    """What both families share: the net, its phase lengths and nudging, EP through the net's
    ``update`` (the increment of −E, or of Φ, between two states)."""

    def __init__(self, net: HopfieldNet | DiscreteModel, *, n_in: int, n_out: int, free_steps: int, nudged_steps: int,
                 eval_steps: int = 0, target: tuple[float, float] = (0.0, 1.0), beta: float = 0.5,
                 mode: str = "positive", description: str = ""):
        self.net, self.n_in, self.n_out = net, n_in, n_out
        self.dtype, self.device = net.dtype, net.device
        self.free_steps, self.nudged_steps, self.eval_steps = free_steps, nudged_steps, eval_steps
        self.target, self.beta, self.mode = tuple(target), float(beta), mode
        self.description = description

    def trainable(self) -> dict[str, torch.Tensor]:
        return self.net.params

    def summary(self) -> str:
        return self.description or type(self.net).__name__

    def _difference(self, x):
        """Σ w (∂E/∂θ(s_to) − ∂E/∂θ(s_from)) from the net's update (the increment of −E / Φ
        from s_from to s_to, divided by the nudge's scale)."""
        def difference(s_from, s_to, w):
            per_sample = torch.is_tensor(w)
            inc = self.net.update(x, s_from, s_to, w if per_sample else None)
            return {k: -v * (1.0 if per_sample else w) / self.net.nudge_scale for k, v in inc.items()}
        return difference

    def _free(self, x, *, idx=None, training: bool = True, generator=None) -> list[torch.Tensor]:
        raise NotImplementedError

    def _nudged(self, x, s, beta, y, generator=None) -> list[torch.Tensor]:
        raise NotImplementedError

    def _output(self, s) -> torch.Tensor:
        raise NotImplementedError

    def predict(self, x) -> torch.Tensor:
        with torch.no_grad():
            return self._output(self._free(self.as_input(x), training=False)).detach()

    def ep_step(self, x, y, *, beta=None, mode=None, sign=None, idx=None, generator=None, optimizer=None) -> EPStep:
        x, y = self.as_input(x), self.targets(y)
        beta, mode = self.beta if beta is None else beta, mode or self.mode
        s0 = self._free(x, idx=idx, generator=generator)
        out = self._output(s0)
        loss = (0.5 * ((out - y) ** 2).sum(1)).detach()
        if self.continual:
            grads = self._continual(x, s0, y, beta, mode, sign, generator, optimizer)
        else:
            nudge = lambda b: self._nudged(x, s0, b.unsqueeze(1), y, generator)
            grads, _ = ep_estimate(s0, nudge, self._difference(x), mode=mode, beta=beta, batch=len(x), sign=sign,
                                   generator=generator, dtype=self.dtype, device=self.device)
        self.accumulate(grads)
        return EPStep(loss, out.detach(), self.free_steps)


class HopfieldEP(SeedModel):
    """Continuous Hopfield EP (seed 000) with its relaxation settings: step ``eps``, persistent
    particles, Langevin ``temperature``."""

    def __init__(self, net: HopfieldNet, *, eps: float = 0.5, persistent: bool = False, temperature: float = 0.0,
                 **kw):
        super().__init__(net, n_in=net.sizes[0], n_out=net.sizes[-1], **kw)
        self.eps, self.persistent, self.temperature = eps, persistent, temperature
        self.particles = ParticleCache(net) if persistent else None

    def layer_of(self, key: str) -> int:
        """W1/b1 = first layer from the input."""
        return int(key[1:])

    def _free(self, x, *, idx=None, training=True, generator=None):
        """Training: from the examples' particles if persistent, Langevin noise if a temperature
        is set; prediction: from zero, noiseless, ``eval_steps`` (or ``free_steps``) steps."""
        steps = self.free_steps if training or not self.eval_steps else self.eval_steps
        persistent = training and self.particles is not None and idx is not None
        start = self.particles.get(idx) if persistent else self.net.zeros(len(x))
        s = self.net.relax(x, start, steps, self.eps, temperature=self.temperature if training else 0.0,
                           generator=generator)
        if persistent:
            self.particles.put(idx, s)
        return s

    def _nudged(self, x, s, beta, y, generator=None):
        return self.net.relax(x, s, self.nudged_steps, self.eps, beta=beta, y=y, temperature=self.temperature,
                              generator=generator)

    def _output(self, s):
        return s[-1]


class DiscreteEP(SeedModel):
    """Discrete-time EP (seeds 002/003): EB, P, P-conv and VF nets (layer 0 is the output), and
    C-EP/C-VF with ``continual``."""

    def __init__(self, net: DiscreteModel, *, n_in: int, n_out: int, continual: bool = False, **kw):
        if continual and kw.get("mode") == "centered":
            raise ValueError("model.continual nudges one way: set train.nudging to positive or random")
        super().__init__(net, n_in=n_in, n_out=n_out, **kw)
        self.continual = continual

    def layer_of(self, key: str) -> int:
        """Seed-003 W{i}_{i+1} counts from the output; here the input-side weight comes first."""
        return len(self.net.shapes) - int(key[1:].split("_")[0])

    def _free(self, x, *, idx=None, training=True, generator=None):
        steps = self.free_steps if training or not self.eval_steps else self.eval_steps
        with torch.no_grad():
            return self.net.relax(x, self.net.zeros(len(x)), steps)

    def _nudged(self, x, s, beta, y, generator=None):
        with torch.no_grad():
            return self.net.relax(x, s, self.nudged_steps, beta, y)

    def _output(self, s):
        return s[0]

    def _continual(self, x, s0, y, beta, mode, sign, generator, optimizer) -> dict[str, torch.Tensor]:
        """C-EP / C-VF: every nudged step's increment is applied at once by ``optimizer``; the
        last one is returned for the caller's update."""
        if optimizer is None:
            raise ValueError("C-EP moves the weights during the nudged phase: pass optimizer= to ep_step")
        if mode == "random" and sign is None:
            sign = torch.randint(0, 2, (len(x),), generator=generator) * 2 - 1
        w = None if mode != "random" else sign.to(self.device, self.dtype)
        b = beta if w is None else beta * w.unsqueeze(1)
        scale = beta * self.net.nudge_scale * len(x)
        with torch.no_grad():
            s = s0
            for t in range(self.nudged_steps):
                nxt = self.net.step(x, s, b, y)
                inc = {k: -v / scale for k, v in self.net.update(x, s, nxt, w).items()}
                if t < self.nudged_steps - 1:
                    for k, p in self.net.params.items():
                        p.grad = inc[k]
                    optimizer.step()
                s = nxt
        for p in self.net.params.values():
            p.grad = None
        return inc


def seed_model_from_config(raw: Mapping, device: str | torch.device = "cpu") -> SeedModel:
    """The seed model a training config describes (plain dict with ``model`` and ``train``
    tables, as stored in checkpoints)."""
    m, t = raw["model"], raw["train"]
    kind = m["kind"]
    if kind not in KINDS:
        raise ValueError(f"model.kind must be one of {', '.join(('circuit',) + KINDS)}, not {kind!r}")
    dtype = torch.float32 if t["dtype"] == "float32" else torch.float64
    sizes = parse_layers(m["layers"])
    n_in, n_out, seed = sizes[0], sizes[-1], t["seed"]
    common = dict(free_steps=m["free_steps"], nudged_steps=m["nudged_steps"], eval_steps=m.get("eval_steps", 0),
                  target=tuple(t["target"]), beta=t["beta"], mode=t["nudging"])
    shape = (f"conv {m['channels']} ({m['kernel']}x{m['kernel']}, pool {m['pool']}) then {m['layers']}"
             if kind == "p-conv" else m["layers"])
    extra = f", angle {m['angle']:g} deg" if kind == "vf" else ""
    common["description"] = (f"{kind} model {shape} ({m['activation']}, T={m['free_steps']}, K={m['nudged_steps']}"
                             f"{', continual' if m.get('continual') else ''}{extra})")
    if kind == "hopfield":
        net = HopfieldNet(sizes, rho=m["activation"], dtype=dtype, device=device, seed=seed, init_scale=m["init_scale"])
        return HopfieldEP(net, eps=m["eps"], persistent=m["persistent"], temperature=m["temperature"], **common)
    if kind == "p-conv":
        side = math.isqrt(n_in)
        if side * side != n_in:
            raise ValueError(f"p-conv needs a square single-channel image; {n_in} inputs are not one")
        net = ConvPrototypical((1, side, side), m["channels"], sizes[1:], kernel=m["kernel"], pool=m["pool"],
                               act=m["activation"], dtype=dtype, device=device, seed=seed, init_scale=m["init_scale"])
    else:  # seed 003 order: output first, the input last
        dims = sizes[1:][::-1]
        cls = {"eb": EnergyBased, "p": Prototypical, "vf": VectorField}[kind]
        kw = dict(eps=m["eps"], clip=m["clip"]) if kind == "eb" else dict(angle=m["angle"]) if kind == "vf" else {}
        net = cls(dims, n_in, layered_pairs(len(dims)), act=m["activation"], dtype=dtype, device=device, seed=seed,
                  init_scale=m["init_scale"], **kw)
    return DiscreteEP(net, n_in=n_in, n_out=n_out, continual=m.get("continual", False), **common)
