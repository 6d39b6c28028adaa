"""The GDU demonstrations of seed 003 (table 3) as a study: the models and data of each, run
through :func:`analog_ep.models.gdu.processes` and compared by :func:`~analog_ep.models.gdu.report`."""
from __future__ import annotations

import torch

from ..data import load_dataset
from ..models.discrete import ConvPrototypical, EnergyBased, Prototypical, layered_pairs, toy_model
from ..models.gdu import processes, report
from ..train.progress import progress_bar

# seed 003 table 3: the GDU demonstrations (activation, T, K, β, ε)
SETTINGS = {
    "toy": dict(T=5000, K=80, beta=0.01),
    "eb-1h": dict(T=800, K=80, beta=0.001),
    "p-1h": dict(T=150, K=10, beta=0.01),
    "p-conv": dict(T=5000, K=10, beta=0.02),
}


def setup(name: str, seed: int = 0, batch: int = 20, dtype=torch.float64, init_scale: float = 1.0):
    """(model, x, y, settings) for a GDU demonstration: the toy model on uniform random inputs
    and one-hot targets (seed 003 C.2), the 784-512-10 nets and the convolutional net of
    appendix D (hard sigmoid) on MNIST training images; weights Glorot × ``init_scale``."""
    if name not in SETTINGS:
        raise ValueError(f"unknown GDU model {name!r}; choose from {', '.join(SETTINGS)}")
    g = torch.Generator().manual_seed(seed)
    if name == "toy":
        x = torch.rand(batch, 10, generator=g, dtype=torch.float64)
        labels = torch.randint(0, 5, (batch,), generator=g)
        model = toy_model(seed, dtype, init_scale)
        n_out = 5
    else:
        d = load_dataset("mnist")
        idx = torch.randperm(len(d.y_train), generator=g)[:batch]
        x, labels = torch.as_tensor(d.x_train[idx.numpy()], dtype=torch.float64), torch.as_tensor(d.y_train[idx.numpy()])
        if name == "p-conv":
            model = ConvPrototypical((1, 28, 28), [32, 64], [10], act="hardsigmoid", dtype=dtype, seed=seed,
                                     init_scale=init_scale)
        else:
            kind = EnergyBased if name.startswith("eb") else Prototypical
            kw = dict(eps=0.08) if kind is EnergyBased else {}
            model = kind([10, 512], 784, layered_pairs(2), act="tanh", dtype=dtype, seed=seed, init_scale=init_scale, **kw)
        n_out = 10
    y = torch.eye(n_out, dtype=torch.float64)[labels]
    return model, x.to(dtype), y.to(dtype), SETTINGS[name]


def run(name: str, *, seed: int = 0, batch: int = 20, init_scale: float = 1.0, T: int | None = None,
        K: int | None = None, beta: float | None = None, progress: bool = False) -> tuple[dict, object]:
    """One GDU demonstration: (report with the settings used, the processes). T, K and β
    default to table 3's; overriding them is the seed's way of searching hyper-parameters.
    ``progress``: a bar over the model steps (T + K) on a terminal."""
    if init_scale <= 0:
        raise ValueError(f"init-scale must be > 0, not {init_scale}")
    if batch < 1:
        raise ValueError(f"batch must be >= 1, not {batch}")
    net, x, y, settings = setup(name, seed=seed, batch=batch, init_scale=init_scale)
    settings = {**settings, **{k: v for k, v in dict(T=T, K=K, beta=beta).items() if v is not None}}
    if settings["beta"] <= 0:
        raise ValueError(f"beta must be > 0, not {settings['beta']}")
    if settings["K"] >= settings["T"]:
        raise ValueError(f"K ({settings['K']}) must be smaller than T ({settings['T']})")
    with progress_bar(None, f"GDU {name}", total=settings["T"] + settings["K"], show=progress) as bar:
        proc = processes(net, x, y, **settings, on_steps=bar.update)
    return dict(model=name, seed=seed, batch=batch, init_scale=init_scale, **settings, **report(proc)), proc
