"""The audit configuration: the JSON object the CLI reads from `--config` and the API accepts.

Every field has a default, so `{}` is a complete configuration. Field meanings follow
`docs/science.md` (the project's specification of shift families and metrics).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# torchvision's ImageNet evaluation ratio (resize 256, crop 224), used when `resize` is unset.
DEFAULT_CROP_FRACTION = 0.875
# Beyond this many shifts an exhaustive grid is refused in favour of `sampling`.
MAX_GRID_SHIFTS = 4096

ShiftMode = Literal["circular", "zero", "reflect", "edge", "crop", "canvas"]
Triple = tuple[float, float, float]
Colour = tuple[
    Annotated[int, Field(ge=0, le=255)],
    Annotated[int, Field(ge=0, le=255)],
    Annotated[int, Field(ge=0, le=255)],
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PreprocessConfig(_Strict):
    """How a probe image becomes a model input."""

    input_size: tuple[Annotated[int, Field(ge=4)], Annotated[int, Field(ge=4)]] | None = Field(
        None, description="(H, W) at model resolution; read from the model when unset."
    )
    resize: Annotated[int, Field(ge=4)] | None = Field(
        None,
        description="Shorter side after the antialiased bilinear resize, before the centre "
        "crop. Unset: round(max(H, W) / 0.875), the ImageNet 256/224 ratio.",
    )
    mean: Triple = Field(IMAGENET_MEAN, description="Per-channel mean, in the scaled value range.")
    std: Triple = Field(IMAGENET_STD, description="Per-channel std, in the scaled value range.")
    channel_order: Literal["RGB", "BGR"] = "RGB"
    value_scale: Annotated[float, Field(gt=0)] = Field(
        1.0, description="Pixel 255 maps to this value before normalisation (1.0: 0-1, 255: 0-255)."
    )
    layout: Literal["NCHW", "NHWC"] | None = Field(
        None, description="Model input layout; read from the model when unset, else NCHW."
    )
    output: Literal["logits", "probabilities"] = "logits"

    @field_validator("std")
    @classmethod
    def _std_positive(cls, std: Triple) -> Triple:
        if any(s <= 0 for s in std):
            raise ValueError(f"std must be positive in every channel, got {std}")
        return std


class SamplingConfig(_Strict):
    """Seeded random-pair sampling, for shift sets too large to evaluate exhaustively."""

    pairs_per_probe: Annotated[int, Field(ge=1, le=10_000)] = 16


class SweepConfig(_Strict):
    """Which shifts are applied to every probe."""

    mode: ShiftMode = Field("circular", description="Shift family, as defined in science.md.")
    max_shift: Annotated[int, Field(ge=0, le=512)] = Field(
        4, description="R: integer grid shifts run over -R..R in each axis."
    )
    step: Annotated[int, Field(ge=1, le=512)] = 1
    shifts: list[tuple[float, float]] | None = Field(
        None,
        description="Explicit (dy, dx) list instead of the grid; may be fractional. "
        "(0, 0) is added when missing.",
    )
    subpixel: Literal["bilinear", "fourier"] = Field(
        "bilinear", description="Resampling for fractional shifts; fourier needs mode circular."
    )
    fill: Colour = Field((0, 0, 0), description="Fill colour in pixel space (zero, canvas).")
    object_size: Annotated[int, Field(ge=2)] | None = Field(
        None, description="canvas: side of the pasted probe; unset: half the input side."
    )
    sampling: SamplingConfig | None = None

    @model_validator(mode="after")
    def _consistent(self) -> SweepConfig:
        if self.subpixel == "fourier" and self.mode != "circular":
            raise ValueError(
                "subpixel 'fourier' is band-limited and periodic: it needs mode 'circular'"
            )
        if self.shifts is not None and self.mode == "canvas":
            raise ValueError("mode 'canvas' places the probe on a grid of `step`; give no `shifts`")
        if self.shifts is not None and len(self.shifts) == 0:
            raise ValueError("shifts must not be empty; omit it to use the grid")
        return self


class LayerConfig(_Strict):
    """Per-layer equivariance profile settings."""

    enabled: bool = True
    probes: Annotated[int, Field(ge=1, le=256)] = Field(
        4, description="The first N probes are used; the profile is a diagnostic, not a sweep."
    )


class RuntimeConfig(_Strict):
    """Where and how the model runs; none of this changes what a metric means."""

    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$")
    batch_size: Annotated[int, Field(ge=1, le=65536)] | None = Field(
        None, description="Fixed model batch size; unset: measured once per model and device."
    )
    threads: Annotated[int, Field(ge=1, le=512)] | None = Field(
        None,
        description="CPU threads of the forward pass; unset: measured with the batch size "
        "(all cores or half of them).",
    )
    backend: Literal["auto", "torch", "onnxruntime", "onnxruntime-exported"] = Field(
        "auto",
        description="What runs the forward pass. auto: the fastest runtime that agrees with the "
        "model's own (same top-1, logits within 1e-4 * max(1, max |logit|) on the first probes), "
        "measured with the batch size and cached; the model's own runtime when nothing is "
        "measured (batch_size set, or a small audit). torch: eager PyTorch (torch.export and "
        "TorchScript files). onnxruntime: ONNX Runtime (ONNX files). onnxruntime-exported: "
        "ONNX Runtime on a graph the engine exports from a torch model; used even if it "
        "disagrees (the report says so).",
    )
    precision: Literal["fp32", "tf32", "bf16", "fp16"] = Field(
        "fp32",
        description="tf32: TensorFloat-32 CUDA matmuls and convolutions (10 mantissa bits; "
        "no effect on CPU). bf16, fp16: mixed precision (autocast) for torch models on any "
        "device. ONNX models always run as exported. The report records what applied.",
    )


class AuditConfig(_Strict):
    """Everything that defines one audit besides the model and the probe set."""

    preprocess: PreprocessConfig = PreprocessConfig()
    sweep: SweepConfig = SweepConfig()
    layers: LayerConfig = LayerConfig()
    runtime: RuntimeConfig = RuntimeConfig()
    class_names: list[str] | None = Field(
        None, description="Class index -> name, to resolve named label folders or labels.csv."
    )
    seed: int = Field(0, description="Seeds the bootstrap and random-pair sampling.")
    bootstrap: Annotated[int, Field(ge=0, le=100_000)] = Field(
        1000, description="Bootstrap resamples for the 95% intervals (0: no intervals)."
    )
    worst_cases: Annotated[int, Field(ge=0, le=1000)] = 10
