"""The choices of one ``qdq quantize`` call (:func:`qdq.pipeline.quantize` documents each), validated."""
from __future__ import annotations

from dataclasses import dataclass, field

from .calib.data import Preprocess
from .calib.ranges import DEFAULT_METHOD, METHODS
from .errors import QdqError
from .measure.tasks import TaskOptions
from .targets import check_target


@dataclass
class Options:
    """The choices of one ``quantize`` call (see its docstring), validated."""

    method: str = DEFAULT_METHOD
    percentile: float = 99.99
    batch_size: int = 1
    target: str = "trt10"
    exclude: tuple = ()
    preprocess: Preprocess | None = None
    limit: int | None = None
    providers: list | None = None
    quiet: bool = False
    force_ranges: bool = False
    mixed_precision: bool = True
    max_loss_db: float = 2.0
    min_int8_share: float = 0.85
    bias_correction: bool = True
    smoothquant: str = "auto"               # auto: LayerNorm → MatMul only | all | off (qdq.graph.equalize)
    equalize: bool = False
    remainder: str = "fp16"                 # how the held-back check runs the non-INT8 layers: fp16 | fp32
    task: TaskOptions = field(default_factory=TaskOptions)
    max_task_loss: float | None = None      # keep layers in float until the task agreement is within this of FP32
    int8_deconv: bool = False               # quantize ungrouped ConvTranspose (TensorRT 8.x/10.x)
    fallback_imported: bool = False         # let mixed precision float layers that read imported ranges
    device_profile: str | None = None       # a folder with trtexec profiles of both engines (qdq.trt.profile.device_speed)

    def __post_init__(self):
        if self.method not in METHODS + ("auto",):
            raise QdqError(f"unknown method {self.method!r}; choose one of {', '.join(METHODS + ('auto',))}")
        if self.smoothquant not in ("auto", "all", "off"):
            raise QdqError(f"--smoothquant must be auto, all or off, got {self.smoothquant!r}")
        if self.remainder not in ("fp16", "fp32"):
            raise QdqError(f"--remainder must be fp16 or fp32, got {self.remainder!r}")
        if self.max_task_loss is not None and not 0.0 <= self.max_task_loss <= 1.0:
            raise QdqError(f"--max-task-loss must be between 0 and 1, got {self.max_task_loss}")
        if self.batch_size < 1:
            raise QdqError(f"--batch-size must be >= 1, got {self.batch_size}")
        if not 0.0 <= self.min_int8_share <= 1.0:
            raise QdqError(f"--min-int8-share must be between 0 and 1, got {self.min_int8_share}")
        check_target(self.target)
        self.exclude = tuple(self.exclude or ())
