"""nslib: neuron sensitivity, adversarial attacks and robust training (Zhang, Liu et al., IEEE TIP 2021).

Modules: data, models, attacks, sensitivity, intervention, training, evaluate, viz, run.
Import what you need: ``from nslib import attacks, sensitivity``.
"""
__version__ = "0.1.0"
