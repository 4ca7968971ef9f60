"""What every algorithm's options dataclass shares: validation, dictionaries, batches.

Each algorithm keeps its own options next to its engine (``rpie.RPIEOptions``,
``dm.DMOptions``, ``lsqml.LSQMLOptions``); :data:`.algorithms.REGISTRY` pairs
them. A field's ``metadata`` holds its one-line ``help`` (read by the CLI,
which makes an option of every field) and, for a choice, its ``choices``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar

NOISE_MODELS = ("gaussian", "poisson")


def option(default: Any, help: str, **metadata: Any) -> Any:
    """A field of an options dataclass with its ``help`` (and e.g. ``choices``)."""
    return field(default=default, metadata={"help": help, **metadata})


@dataclass
class AlgorithmOptions:
    """Options of an algorithm that updates all frames together."""

    algorithm: ClassVar[str] = ""

    def __post_init__(self) -> None:
        for spec in fields(self):
            choices = spec.metadata.get("choices")
            value = getattr(self, spec.name)
            if choices and value not in choices:
                raise ValueError(f"{spec.name} must be one of {choices}, got {value!r}")
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming a value out of range."""

    def effective_batch_size(self, n_frames: int) -> int:
        """Frames updated together, out of ``n_frames``."""
        return n_frames

    def to_dict(self) -> dict[str, Any]:
        """The options that can be set, as a JSON-friendly dictionary."""
        return {k: v for k, v in asdict(self).items() if k in settable(type(self))}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> AlgorithmOptions:
        """Options from a dictionary, refusing a key this algorithm does not take, by name."""
        unknown = sorted(set(values) - set(settable(cls)))
        if unknown:
            raise ValueError(
                f"{cls.algorithm} takes no option {', '.join(unknown)} "
                f"(its options: {', '.join(settable(cls)) or 'none'})"
            )
        return cls(**values)


def settable(cls: type[AlgorithmOptions]) -> dict[str, Any]:
    """The fields of ``cls`` a user can set (pinned ones are ``init=False``), by name."""
    return {spec.name: spec for spec in fields(cls) if spec.init}


@dataclass
class MinibatchOptions(AlgorithmOptions):
    """Options of an algorithm that updates frames a batch at a time."""

    batch_size: int = option(64, "frames per update")

    def validate(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")

    def effective_batch_size(self, n_frames: int) -> int:
        return min(self.batch_size, n_frames)


def check_alpha(alpha: float) -> None:
    """The regularisation of a PIE-like step is a fraction."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be within [0, 1], got {alpha}")
