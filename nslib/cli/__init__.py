"""The command line: ``python -m nslib {reproduce,analyze,train,evaluate,compare,bench}`` (also installed as ``nslib``).

A layer of its own, above the library (``nslib/*.py``, which never imports it) and beside the reproduction
(``nslib/repro/``, which ``main`` alone calls, for ``reproduce``): ``main`` parses the flags, ``specs`` reads what the
commands share (the SPEC grammar of ``--model``, ``--data``, and the shared flags, declared once), and each command is
a module: ``analyze``, ``train``, ``evaluate``, ``compare``, ``bench`` (``bench_attacks``: its attack benchmarks).
"""
