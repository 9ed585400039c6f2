"""The settings of a training run: :class:`TrainConfig`, the published presets, and the precision it computes in.

What a run computes (learning rate, batches, epochs, seed, LoRA...) is checked here once and recorded in the
run's summary and model card; the speed choices (:data:`RUN_TIME`) may differ between a run and its resumption.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import InputError

TRAIN_LONG_TEXT = ("truncate", "head_tail")
PRECISIONS = ("auto", "fp32", "bf16")
DEVICES = ("auto", "cpu", "cuda")  # and "cuda:N" for the N-th GPU


def cpu_flags() -> set[str]:
    """The flags of this machine's CPU (empty when /proc/cpuinfo cannot be read, as on macOS)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def resolve_device(device: str) -> str:
    """``"cpu"`` or ``"cuda[:N]"``: ``auto`` is the first GPU where PyTorch sees one, else the CPU; a GPU asked
    for that PyTorch cannot use is an :class:`InputError`."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        index = int(device.partition(":")[2] or 0)
        if not torch.cuda.is_available() or index >= torch.cuda.device_count():
            raise InputError(f"device {device!r}: PyTorch sees {torch.cuda.device_count()} CUDA device(s) "
                             f"(torch {torch.__version__}); use --device cpu")
    return device


def resolve_precision(precision: str, flags: set[str] | None = None, device: str = "cpu") -> str:
    """``"fp32"`` or ``"bf16"``: ``auto`` is bf16 where the CPU multiplies bfloat16 natively (AVX512_BF16 or
    AMX), where autocast trains about 1.6x faster; elsewhere bf16 is emulated and slower than float32. On a GPU
    (``device`` "cuda..."), ``auto`` is bf16 where the GPU supports it (Ampere and later)."""
    if precision != "auto":
        return precision
    if device.startswith("cuda"):
        import torch

        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    flags = cpu_flags() if flags is None else flags
    return "bf16" if flags & {"avx512_bf16", "amx_bf16"} else "fp32"


@dataclass(frozen=True)
class TrainConfig:
    learning_rate: float = 5e-5
    batch_size: int = 32
    warmup_steps: int = 600
    epochs: int = 3
    max_length: int = 128
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    seed: int = 42
    eval_every: int = 500  # steps between dev evaluations (and at the end of every epoch)
    save_every: int = 200  # steps between resume checkpoints
    group_by_length: bool = True
    group_size: int = 64  # batches per shuffled chunk that is sorted by length before cutting batches
    ema_decay: float = 0.0  # 0 disables the weight average; e.g. 0.999
    threads: int | None = None
    max_steps: int | None = None  # stop after this many optimizer steps (default: all epochs)
    # Which max_length tokens of a longer text are trained on (and evaluated): "truncate" keeps the first,
    # "head_tail" the first ``head`` and the last (see long_text.py), where a review's verdict often is.
    long_text: str = "truncate"
    head: int | None = None  # head_tail: tokens kept from the start (default: a quarter of the window)
    # LoRA (see lora.py): 0 trains every weight; R > 0 trains rank-R adapters and the head, merged on save.
    lora_rank: int = 0
    lora_alpha: float | None = None  # None: 2 * lora_rank
    lora_targets: tuple[str, ...] = ("q_lin", "k_lin", "v_lin", "out_lin", "lin1", "lin2")
    # Arithmetic of the forward and backward passes: "bf16" runs them under bfloat16 autocast (weights, optimizer
    # state and saved models stay float32); "auto" picks bf16 where the CPU has it (resolve_precision). Like
    # threads, a speed choice: a run may be resumed in another precision.
    precision: str = "auto"
    # Where the run computes: "auto" is the first GPU PyTorch sees, else the CPU (resolve_device). A speed choice
    # too; the weights computed differ in the last digits between devices, as between precisions.
    device: str = "auto"

    def __post_init__(self) -> None:
        for name in ("batch_size", "epochs", "max_length", "group_size", "save_every"):
            if getattr(self, name) < 1:
                raise InputError(f"{name} must be positive, got {getattr(self, name)}")
        if self.learning_rate <= 0 or self.warmup_steps < 0 or self.eval_every < 0:
            raise InputError("learning_rate must be positive, warmup_steps and eval_every non-negative")
        if not 0.0 <= self.ema_decay < 1.0:
            raise InputError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.max_steps is not None and self.max_steps < 1:
            raise InputError(f"max_steps must be positive, got {self.max_steps}")
        if self.long_text not in TRAIN_LONG_TEXT:
            # A window strategy gives several sequences per text, each with the text's label: not a
            # training set the loop's one-label-per-sequence loss should see silently.
            raise InputError(f"long_text for training must be one of {', '.join(TRAIN_LONG_TEXT)}, "
                             f"got {self.long_text!r}")
        if self.head is not None and self.head < 0:
            raise InputError(f"head must be zero or more tokens, got {self.head}")
        if self.precision not in PRECISIONS:
            raise InputError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        name, colon, index = self.device.partition(":")
        if name not in DEVICES or (colon and (name != "cuda" or not index.isdigit())):
            raise InputError(f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}")


PRESETS = {
    # The published recipes: SST-2 as for distilbert-base-uncased-finetuned-sst-2-english, IMDb as in
    # the Hugging Face course.
    "sst2": TrainConfig(learning_rate=1e-5, batch_size=32, warmup_steps=600, max_length=128, epochs=3),
    "imdb": TrainConfig(learning_rate=2e-5, batch_size=16, warmup_steps=100, max_length=512, epochs=3, seed=42),
}

# Settings that change how fast a run goes, not what it computes: a run may be resumed or repeated with others.
RUN_TIME = ("threads", "precision", "device")
