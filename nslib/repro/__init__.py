"""The reproduction: profiles and settings, the model and pair caches, the computations behind E1-E4, the
report and the papermill orchestration of the numbered notebooks.

It is built on the library (``nslib.attacks``, ``nslib.sensitivity``, ``nslib.training``, ...) and the library
never imports it (``tests/test_layers.py`` checks this).
"""
