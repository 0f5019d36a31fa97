"""Graph → graph: the index (:mod:`.index`), onnx-graphsurgeon passes and checks (:mod:`.surgery`),
TensorRT's placement rules (:mod:`.placement`), Q/DQ insertion (:mod:`.rewrite`), FP16/FP32 casts
(:mod:`.precision`), bias correction, equalization, bypassed views (:mod:`.bypass`), reading a Q/DQ
file back (:mod:`.qdq_file`) and MACs (:mod:`.shapes`).  Reads :mod:`qdq.calib`, nothing above."""
