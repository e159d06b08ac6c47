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
# Beyond this many shifts an exhaustive grid is refused in favour of `sampling`; an explicit
# list is never longer.
MAX_GRID_SHIFTS = 4096
# The largest side of a model input, a canvas object, and a shift (or max_shift, step) in
# pixels: beyond them a single image is hundreds of MB, and no classifier runs there.
MAX_SIDE = 4096
MAX_SHIFT = 512

ShiftMode = Literal["circular", "zero", "reflect", "edge", "crop", "canvas"]
Triple = tuple[float, float, float]
Colour = tuple[
    Annotated[int, Field(ge=0, le=255)],
    Annotated[int, Field(ge=0, le=255)],
    Annotated[int, Field(ge=0, le=255)],
]


class _Strict(BaseModel):
    # allow_inf_nan=False: JSON's NaN and Infinity are refused in every float (a NaN mean or
    # std would make every output NaN, which the metrics would read as invariance).
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


Side = Annotated[int, Field(ge=4, le=MAX_SIDE)]
ShiftValue = Annotated[float, Field(ge=-MAX_SHIFT, le=MAX_SHIFT)]


class PreprocessConfig(_Strict):
    """How a probe image becomes a model input."""

    input_size: tuple[Side, Side] | None = Field(
        None, description="(H, W) at model resolution; read from the model when unset."
    )
    resize: Annotated[int, Field(ge=4, le=2 * MAX_SIDE)] | None = Field(
        None,
        description="Shorter side after the antialiased bilinear resize, before the centre "
        "crop. Unset: round(max(H, W) / 0.875), the ImageNet 256/224 ratio.",
    )
    mean: Triple = Field(IMAGENET_MEAN, description="Per-channel mean, in the scaled value range.")
    std: Triple = Field(IMAGENET_STD, description="Per-channel std, in the scaled value range.")
    channel_order: Literal["RGB", "BGR"] = "RGB"
    value_scale: Annotated[float, Field(gt=0, le=65535)] = Field(
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
    max_shift: Annotated[int, Field(ge=0, le=MAX_SHIFT)] = Field(
        4, description="R: integer grid shifts run over -R..R in each axis."
    )
    step: Annotated[int, Field(ge=1, le=MAX_SHIFT)] = 1
    shifts: list[tuple[ShiftValue, ShiftValue]] | None = Field(
        None,
        max_length=MAX_GRID_SHIFTS,
        description="Explicit (dy, dx) list instead of the grid; may be fractional. "
        "(0, 0) is added when missing.",
    )
    subpixel: Literal["bilinear", "fourier"] = Field(
        "bilinear", description="Resampling for fractional shifts; fourier needs mode circular."
    )
    fill: Colour = Field((0, 0, 0), description="Fill colour in pixel space (zero, canvas).")
    object_size: Annotated[int, Field(ge=2, le=MAX_SIDE)] | None = Field(
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
        count = self.shift_count(None)
        if self.sampling is None and count is not None and count > MAX_GRID_SHIFTS:
            raise ValueError(
                f"the sweep has {count} shifts, more than the {MAX_GRID_SHIFTS} evaluated "
                "exhaustively per probe; set sweep.sampling (random pairs) or a larger step"
            )
        return self

    def shift_count(self, input_size: tuple[int, int] | None) -> int | None:
        """|T|, the number of shifts of the sweep; None for a canvas of unknown input size.

        Grid: (2 floor(R / step) + 1)^2. Explicit list: its distinct entries with (0, 0).
        Canvas of side o on H x H: ((H - o - c) // step + c // step + 1)^2 positions with
        c = (H - o) // 2, the centred corner (shifts.plan_shifts builds exactly these).
        """
        if self.mode == "canvas":
            if input_size is None:
                return None
            side = self.object_size or min(input_size) // 2
            height = input_size[0]
            centre = (height - side) // 2
            across = centre // self.step + (height - side - centre) // self.step + 1
            return max(across, 0) ** 2
        if self.shifts is not None:
            return len({(float(dy), float(dx)) for dy, dx in self.shifts} | {(0.0, 0.0)})
        return (2 * (self.max_shift // self.step) + 1) ** 2

    def evaluations_per_probe(self, input_size: tuple[int, int] | None) -> int | None:
        """Forward passes per probe: every shift, or t = 0 and two per sampled pair."""
        if self.sampling is not None:
            return 1 + 2 * self.sampling.pairs_per_probe
        return self.shift_count(input_size)


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
    seed: Annotated[int, Field(ge=0, le=2**63 - 1)] = Field(
        0, description="Seeds the bootstrap and random-pair sampling (a non-negative integer)."
    )
    bootstrap: Annotated[int, Field(ge=0, le=100_000)] = Field(
        1000, description="Bootstrap resamples for the 95% intervals (0: no intervals)."
    )
    worst_cases: Annotated[int, Field(ge=0, le=1000)] = 10
