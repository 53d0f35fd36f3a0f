"""nslib: neuron sensitivity, adversarial attacks and robust training (Zhang, Liu et al., IEEE TIP 2021).

Kernels: data, models, attacks (attack_core, autoattack, minnorm), sensitivity (hooks), intervention, methods,
training (checkpoints), evaluate, verdicts; tools: fast, distributed, streams, store, checks, progress, viz, forest;
the command line (``python -m nslib ...``, :mod:`nslib.cli`): main, specs, analyze, train, evaluate, compare, bench;
the reproduction: repro.
Import what you need: ``from nslib import attacks, sensitivity``.
"""
__version__ = "0.1.0"


def compare(paths_a, paths_b, **kwargs) -> dict:
    """Is model A more robust than model B: :func:`nslib.cli.compare.compare` of two ``nslib evaluate`` outputs
    (imported here on first use). Usage: ``nslib.compare("eval/at", "eval/trades", margin=0.01)``."""
    from nslib.cli.compare import compare as _compare
    return _compare(paths_a, paths_b, **kwargs)
