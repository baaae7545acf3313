"""Unlearning methods by name: which objective the loop minimises and what happens afterwards.

A baseline that is a plain objective (GA, NPO, ...) adds one entry with `extrapolate=False`; MOX and
task vectors add `extrapolate=True`, which turns the trained model θ into θ_ref + α(θ_ref − θ).
"""

from __future__ import annotations

from dataclasses import dataclass

from mox_unlearn.errors import MoxError


@dataclass(frozen=True)
class Method:
    name: str
    objectives: tuple[str, ...]  # objectives this method accepts; the first is its default
    extrapolate: bool  # the trained model is θ_mem; the output is (1+α)θ_ref − αθ_mem (Eq. 8)
    summary: str


METHODS: dict[str, Method] = {
    "mox": Method(
        "mox",
        ("memorize", "memorize_po"),
        extrapolate=True,
        summary="MOX: memorize the forget set with gradient descent, then extrapolate away (Eq. 4/5, 8)",
    ),
}


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise MoxError(f"unknown method {name!r}; valid methods: {', '.join(sorted(METHODS))}")
    return METHODS[name]
