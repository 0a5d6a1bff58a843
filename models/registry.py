"""Variants of MCFF-L Net registered by name, timm-style.

Each entry point is a few lines beside its own default card values (input size, channel order,
normalisation, size multiple, threshold): the one home of those defaults.  A model card that does
not say a value takes its variant's (``models.card``), and training normalises with them
(``trainer.data``), so a new size is one function and every registry-wide test covers it.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable

_REGISTRY: dict[str, Callable[..., Any]] = {}
_DEFAULTS: dict[str, "VariantDefaults"] = {}


DEFAULT_VARIANT = "student"
# The model card fields a variant gives defaults for (see VariantDefaults).
CARD_DEFAULTS = ("input_size", "channel_order", "mean", "std", "size_multiple", "threshold")


@dataclass(frozen=True)
class VariantDefaults:
    """What a consumer needs to feed the network, written into every model card of the variant."""
    input_size: tuple[int, int]
    channel_order: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    size_multiple: int     # H and W must be multiples of this (two 2x2 poolings)
    threshold: float       # until one is picked on validation
    arch_kwargs: dict[str, Any] = field(default_factory=dict)

    def card_values(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in CARD_DEFAULTS}


def register(name: str, defaults: VariantDefaults) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        if name in _REGISTRY:
            raise ValueError(f"model variant {name!r} registered twice")
        _REGISTRY[name] = fn
        _DEFAULTS[name] = defaults
        return fn
    return wrap


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def variant_defaults(name: str) -> VariantDefaults:
    _check(name)
    return _DEFAULTS[name]


def _check(name: str) -> None:
    if name not in _REGISTRY:
        raise KeyError(f"unknown model variant {name!r}; known: {', '.join(list_models())}")


def create_model(name: str, **overrides: Any):
    """Build a registered variant; overrides that are None are ignored (CLI flags left unset)."""
    _check(name)
    return _REGISTRY[name](**{k: v for k, v in overrides.items() if v is not None})


def _build(name: str, **overrides: Any):
    from models.mcff import MCFFConfig, MCFFLNet  # torch only when a model is really built

    cfg = replace(MCFFConfig(), **{**_DEFAULTS[name].arch_kwargs, **overrides})
    return MCFFLNet(cfg)


# The published normalisation, (pixel - 127.5) / 127.5 on BGR, and the daemon's default 448x448.
_BGR_HALF = dict(channel_order="BGR", mean=(127.5, 127.5, 127.5), std=(127.5, 127.5, 127.5))


@register("student", VariantDefaults(input_size=(448, 448), size_multiple=4, threshold=0.5, **_BGR_HALF,
                                     arch_kwargs=dict(width=16, n_blocks=4)))
def student(**overrides: Any):
    """The deployable student: 1.179 M parameters."""
    return _build("student", **overrides)


@register("teacher", VariantDefaults(input_size=(448, 448), size_multiple=4, threshold=0.5, **_BGR_HALF,
                                     arch_kwargs=dict(width=64, n_blocks=8, dropout=0.5)))
def teacher(**overrides: Any):
    """The teacher: 32.9 M parameters, dropout 0.5 before each transposed convolution."""
    return _build("teacher", **overrides)


@register("student-mcld", VariantDefaults(input_size=(448, 448), size_multiple=4, threshold=0.5, **_BGR_HALF,
                                          arch_kwargs=dict(width=16, n_blocks=4, depthwise=True)))
def student_mcld(**overrides: Any):
    """The student with depthwise-separable residual blocks (MCLD)."""
    return _build("student-mcld", **overrides)
