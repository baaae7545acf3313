"""Extrapolation-time variants of MOX (issue 17): which part of Δ = θ_ref − θ_mem each tensor steps along.

Eq. 8 moves every weight: θ_for = θ_ref + α·Δ. A variant changes, per tensor, which entries of Δ move and
how far, in the same streaming pass, and is chosen after training like α itself:

  keep_fraction P   keep the ⌈P·n⌉ entries of the tensor's Δ with the largest |Δ|, zero the rest
                    (TIES-merging's trim); P = 1 keeps all
  drop_rate p       drop each remaining entry with probability p and scale the survivors by 1/(1 − p)
                    (DARE), from a generator seeded by `seed` and the tensor's name (order-independent)
  only / skip       regular expressions (re.search) on tensor names: edit only matching tensors / leave
                    matching ones at θ_ref (e.g. only="mlp", skip="embed|norm")
  alpha_by_depth    "linear:A,B": layer i of L gets α·(A + (B − A)·i/(L − 1)), each stack of numbered layers
                    over its own depth (T5's encoder and decoder, a multimodal model's towers); tensors
                    outside the numbered layers (embeddings, final norm, head) keep α

so θ_for = θ_ref + α·s(name)·(M ⊙ Δ)/(1 − p), M the kept entries. The plain variant is Eq. 8 itself, and
tensors a variant leaves whole (no trim, no drop) are computed by the same code as plain extrapolation, so
`keep_fraction=1` is bitwise the plain result. This module is torch-free (configs read it); the tensor
math is extrapolate.extrapolate_variant.
"""

from __future__ import annotations

import math
import numbers
import re
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, fields

from mox_unlearn.errors import MoxError

# the index of a numbered layer in a tensor name: Llama/Mistral/Qwen "model.layers.3.", GPT-2 "h.3.", T5
# "encoder.block.3." (the leftmost match: not T5's "layer.0." inside a block), BERT/ViT "layer.3.", ...
LAYER_INDEX = re.compile(r"(?:^|\.)(?:layers|h|blocks|block|layer)\.(\d+)\.")


@dataclass
class Variant:
    """Which entries of Δ each tensor moves along (module docstring); the defaults are plain Eq. 8."""

    keep_fraction: float = 1.0
    drop_rate: float = 0.0
    seed: int = 0
    only: str | None = None
    skip: str | None = None
    alpha_by_depth: str | None = None

    def __post_init__(self) -> None:
        # numbers as Python's own (a numpy scalar from a sweep in code is one): exact decimals, JSON keys
        if not (_is_real(self.keep_fraction) and 0 < self.keep_fraction <= 1):
            raise MoxError(f"keep_fraction must be in (0, 1], got {self.keep_fraction!r}")
        if not (_is_real(self.drop_rate) and 0 <= self.drop_rate < 1):
            raise MoxError(f"drop_rate must be in [0, 1), got {self.drop_rate!r}")
        if not (isinstance(self.seed, numbers.Integral) and not isinstance(self.seed, bool) and self.seed >= 0):
            raise MoxError(f"the variant's seed must be an integer >= 0, got {self.seed!r}")
        self.keep_fraction, self.drop_rate, self.seed = float(self.keep_fraction), float(self.drop_rate), int(self.seed)
        for key in ("only", "skip"):
            pattern = getattr(self, key)
            if pattern is None:
                continue
            if not isinstance(pattern, str):
                raise MoxError(f"{key} must be a regular expression (text), got {pattern!r}")
            try:
                re.compile(pattern)
            except re.error as e:
                raise MoxError(f"{key} {pattern!r} is not a regular expression: {e}") from None
        self.depth_ends()  # parses, or refuses in one line

    @classmethod
    def from_settings(cls, settings: object, where: str) -> Variant:
        """A Variant from a mapping of its settings (YAML, a config list); anything else, an unknown
        setting or a bad value is one line that starts with `where` (the flag or key it came from)."""
        if not isinstance(settings, Mapping):
            raise MoxError(f"{where}: expected settings such as {{keep_fraction: 0.2, only: mlp}}, got {settings!r}")
        unknown = sorted(set(settings) - set(SETTINGS), key=str)  # YAML may key by a number
        if unknown:
            raise MoxError(f"{where}: unknown setting {unknown[0]!r}; valid: {', '.join(SETTINGS)}")
        try:
            return cls(**settings)
        except MoxError as e:
            raise MoxError(f"{where}: {e}") from None

    @property
    def plain(self) -> bool:
        return self == Variant(seed=self.seed)

    def depth_ends(self) -> tuple[float, float] | None:
        """(A, B) of alpha_by_depth "linear:A,B"; None without a schedule."""
        if self.alpha_by_depth is None:
            return None
        kind, _, ends = self.alpha_by_depth.partition(":") if isinstance(self.alpha_by_depth, str) else ("", "", "")
        try:
            a, b = (float(x) for x in ends.split(","))
        except ValueError:
            a = b = math.nan
        if kind != "linear" or not (math.isfinite(a) and math.isfinite(b)):
            raise MoxError(f"alpha_by_depth must be linear:A,B (two numbers), got {self.alpha_by_depth!r}")
        return a, b

    def edits(self, name: str) -> bool:
        """Whether tensor `name` moves at all (only / skip)."""
        if self.only is not None and not re.search(self.only, name):
            return False
        return not (self.skip is not None and re.search(self.skip, name))

    def scale(self, name: str, layers: int | Mapping[str, int]) -> float:
        """The depth schedule's factor on α for tensor `name` (1 outside the numbered layers): layer i of the
        L layers of its own stack (`count_layers`; an int: one stack of that many layers)."""
        ends = self.depth_ends()
        hit = layer_of(name)
        if ends is None or hit is None:
            return 1.0
        a, b = ends
        stack, i = hit
        n = layers if isinstance(layers, int) else layers.get(stack, i + 1)
        return a if n <= 1 else a + (b - a) * i / (n - 1)

    def check_edits(self, names: Iterable[str], what: str) -> None:
        """Refuse an only / skip that leaves every tensor of `names` (the floating-point ones of `what`) at
        θ_ref: the result would be θ_ref itself, written as an unlearned model (e.g. only=lm_head on a model
        whose output layer is tied to its embeddings, so has no tensor of that name)."""
        names = list(names)
        if (self.only is None and self.skip is None) or any(self.edits(n) for n in names):
            return
        rules = ", ".join(f"{k}={getattr(self, k)!r}" for k in ("only", "skip") if getattr(self, k) is not None)
        example = next((n for n in names if layer_of(n)), names[0] if names else "none")
        raise MoxError(
            f"{rules} edits no tensor of {what}: the result would be θ_ref itself (its tensors are named like "
            f"{example})"
        )

    def trims(self) -> bool:
        """Whether entries of Δ are zeroed or rescaled (not only whole tensors chosen or α scaled)."""
        return self.keep_fraction < 1 or self.drop_rate > 0

    def tensor_seed(self, name: str) -> int:
        """The drop mask's seed for one tensor: the same whatever order tensors come in."""
        return (self.seed * 1_000_003 + zlib.crc32(name.encode())) % (2**63)

    def label(self) -> str:
        """A short name for folders and tables: "" for plain, else e.g. "keep0.2-only_mlp"."""
        parts = []
        if self.keep_fraction < 1:
            parts.append(f"keep{self.keep_fraction:g}")
        if self.drop_rate > 0:
            parts.append(f"drop{self.drop_rate:g}s{self.seed}")
        for key in ("only", "skip"):
            if getattr(self, key) is not None:
                parts.append(f"{key}_{re.sub(r'[^A-Za-z0-9]+', '', getattr(self, key))[:16]}")
        if self.alpha_by_depth is not None:
            a, b = self.depth_ends()
            parts.append(f"depth{a:g}-{b:g}")
        return "-".join(parts)

    def fields(self) -> dict:
        """The non-default settings, for model cards, cache keys and run.json."""
        default = asdict(Variant())
        return {k: v for k, v in asdict(self).items() if v != default[k] and not (k == "seed" and not self.drop_rate)}


SETTINGS = tuple(f.name for f in fields(Variant))


def layer_of(name: str) -> tuple[str, int] | None:
    """(stack, index) of a tensor in a numbered layer: the stack is the name up to the index
    ("model.layers.", "encoder.block.", "vision_tower.encoder.layers."); None outside the numbered layers."""
    hit = LAYER_INDEX.search(name)
    return (name[: hit.start(1)], int(hit.group(1))) if hit else None


def count_layers(names) -> dict[str, int]:
    """{stack: number of layers (largest index + 1)} of the numbered layers among tensor names: one stack in a
    decoder-only model, encoder and decoder apart in T5, the vision and the language tower apart in a
    multimodal model, so each gets the whole depth schedule."""
    stacks: dict[str, int] = {}
    for name in names:
        if (hit := layer_of(name)) is not None:
            stacks[hit[0]] = max(stacks.get(hit[0], 0), hit[1] + 1)
    return stacks


def _is_real(value: object) -> bool:
    """A real number that is not a bool (True would read as keep_fraction 1)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)
