"""The choices of one ``qdq quantize`` call (:func:`qdq.pipeline.quantize` documents each), validated
and grouped by the stage that reads them."""
from __future__ import annotations

from dataclasses import dataclass, field, fields

from .calib.data import Preprocess
from .calib.ranges import DEFAULT_METHOD, METHODS
from .errors import QdqError
from .measure.tasks import TaskOptions
from .targets import check_target


@dataclass(frozen=True)
class DataOptions:
    """How the samples are read and run."""

    preprocess: Preprocess | None = None
    limit: int | None = None
    batch_size: int = 1
    providers: list | None = None

    def __post_init__(self):
        if self.batch_size < 1:
            raise QdqError(f"--batch-size must be >= 1, got {self.batch_size}")


@dataclass(frozen=True)
class RangeOptions:
    """How activation ranges are computed (and whether imported ones force a Q/DQ)."""

    method: str = DEFAULT_METHOD
    percentile: float = 99.99
    force_ranges: bool = False

    def __post_init__(self):
        if self.method not in METHODS + ("auto",):
            raise QdqError(f"unknown method {self.method!r}; choose one of {', '.join(METHODS + ('auto',))}")


@dataclass(frozen=True)
class GraphOptions:
    """What the file is written for and which graph edits come first."""

    target: str = "trt10"
    exclude: tuple = ()
    int8_deconv: bool = False               # quantize ungrouped ConvTranspose (TensorRT 8.x/10.x)
    smoothquant: str = "auto"               # auto: LayerNorm → MatMul only | all | off (qdq.graph.equalize)
    equalize: bool = False

    def __post_init__(self):
        if self.smoothquant not in ("auto", "all", "off"):
            raise QdqError(f"--smoothquant must be auto, all or off, got {self.smoothquant!r}")
        check_target(self.target)
        object.__setattr__(self, "exclude", tuple(self.exclude or ()))


@dataclass(frozen=True)
class AccuracyOptions:
    """The passes measured on held-back samples: bias correction, mixed precision and its targets."""

    mixed_precision: bool = True
    max_loss_db: float = 2.0
    min_int8_share: float = 0.85
    bias_correction: bool = True
    remainder: str = "fp16"                 # how the held-back check runs the non-INT8 layers: fp16 | fp32
    task: TaskOptions = field(default_factory=TaskOptions)
    max_task_loss: float | None = None      # keep layers in float until the task agreement is within this of FP32
    fallback_imported: bool = False         # let mixed precision float layers that read imported ranges
    device_profile: str | None = None       # a folder with trtexec profiles of both engines (qdq.trt.profile.device_speed)

    def __post_init__(self):
        if self.remainder not in ("fp16", "fp32"):
            raise QdqError(f"--remainder must be fp16 or fp32, got {self.remainder!r}")
        if self.max_task_loss is not None and not 0.0 <= self.max_task_loss <= 1.0:
            raise QdqError(f"--max-task-loss must be between 0 and 1, got {self.max_task_loss}")
        if not 0.0 <= self.min_int8_share <= 1.0:
            raise QdqError(f"--min-int8-share must be between 0 and 1, got {self.min_int8_share}")


GROUPS = {"data": DataOptions, "ranges": RangeOptions, "graph": GraphOptions, "accuracy": AccuracyOptions}


@dataclass(frozen=True)
class Options:
    """The choices of one ``quantize`` call (see its docstring), by group; :meth:`of` takes them flat."""

    data: DataOptions = field(default_factory=DataOptions)
    ranges: RangeOptions = field(default_factory=RangeOptions)
    graph: GraphOptions = field(default_factory=GraphOptions)
    accuracy: AccuracyOptions = field(default_factory=AccuracyOptions)
    quiet: bool = False

    @classmethod
    def of(cls, quiet: bool = False, **keywords) -> "Options":
        """``quantize``'s keywords, each to its group; an unknown one is a TypeError, as for a call."""
        owner = {f.name: group for group, kind in GROUPS.items() for f in fields(kind)}
        unknown = sorted(set(keywords) - set(owner))
        if unknown:
            raise TypeError(f"quantize() got an unexpected keyword argument {unknown[0]!r}")
        return cls(**{group: kind(**{k: v for k, v in keywords.items() if owner[k] == group})
                      for group, kind in GROUPS.items()}, quiet=quiet)
