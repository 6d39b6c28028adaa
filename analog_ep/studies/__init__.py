"""Things a person runs: SPICE vs emulator comparison, the ngspice verification of trained
circuits, checkpoint evaluation, device robustness sweeps, the GDU demonstrations, what a
finished training run writes, and their figures.

May import every library layer (``circuit``, ``spice``, ``data``, ``emulator``, ``devices``,
``models``, ``train``). Never ``cli``.
"""
