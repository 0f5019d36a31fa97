"""Data → numbers: samples (:mod:`.data`), streaming statistics (:mod:`.stats`), range methods
(:mod:`.ranges`), ONNX Runtime sessions (:mod:`.session`), the calibration pass (:mod:`.calibrate`),
range files in and out (:mod:`.range_files`).  Imports nothing above :mod:`qdq.errors`,
:mod:`qdq.progress` and :mod:`qdq.modelio`."""
