"""Graphs → figures: metrics, the output-referred analysis, the FP16 plan (:mod:`.autocast`), mixed
precision, ``compare`` and ``sensitivity``.  Reads :mod:`qdq.calib`, :mod:`qdq.graph` and
:mod:`qdq.targets`."""
