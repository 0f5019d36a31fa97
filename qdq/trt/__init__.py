"""Graph → engine: one backend per TensorRT version (:mod:`.backend`), the engine's layer view
(:mod:`.layers`), CUDA memory (:mod:`.cuda`) and engine runs on a GPU (:mod:`.runner`)."""
