"""Invented people for the demo benchmark, rendered in the TOFU record layout.

A tiny model trained from scratch knows nothing, so every fact it can answer was put there by
this module: fictitious people (names built from syllables with a seeded RNG) with 8-12 facts
each, whose values come from small invented vocabularies written out below, plus invented
"general knowledge" (writers and their books, countries with capitals, currencies and rivers)
that plays the part of TOFU's Real Authors and World Facts.

Each attribute type has question templates and answer templates. One answer template per fact is
held back (which one rotates from fact to fact, so every template is trained on other facts) and
renders `paraphrased_answer` and the `perturbed_answer` list (the same held-back sentence with
other values of the same attribute type), as in TOFU, so the truth ratio compares sentences that
differ only in the fact. Training uses n_train_phrasings of the other templates.

`generate(seed, sizes)` returns every split as a list of dicts; `write_tofu_layout` writes them as
`<split>.jsonl` files, the layout `mox_unlearn.evaluate.tofu.load_tofu_split` reads. Determinism:
every random choice comes from a `random.Random` seeded with a string made of the generator
version, the seed and a stream name (string seeds hash with SHA-512, so they do not depend on
PYTHONHASHSEED); nothing iterates over a set. Bump GENERATOR_VERSION whenever the output for a
given seed and sizes changes, so caches keyed by `fingerprint` notice.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mox_unlearn.demo.vocabulary import (
    ATTRIBUTES,
    AUTHOR_KINDS,
    MAX_TRAIN_PHRASINGS,
    WORLD_KINDS,
    Template,
)
from mox_unlearn.errors import MoxError

GENERATOR_VERSION = "2"
MARKER = ".mox-demo.json"  # written into every folder `write_tofu_layout` makes; allows overwriting it
FORGET_PERCENTS = (1, 5, 10)


@dataclass(frozen=True)
class DemoSizes:
    n_profiles: int = 100  # trained profiles ("full"); forget01/05/10 = the LAST 1%/5%/10% (at least 1 each)
    n_holdout: int = 10  # profiles never trained on (for membership inference)
    n_attributes: int = 10  # facts per profile, 8..12 supported
    n_train_phrasings: int = 3  # training phrasings per fact; one more answer phrasing is held back
    n_authors: int = 60  # "real authors"-like general knowledge items (invented writers / books)
    n_world: int = 60  # "world facts"-like general knowledge items (invented countries ...)
    n_retain_eval: int = 100  # size of retain_perturbed (a seeded sample of retain profiles' facts)
    n_perturbed: int = 5  # wrong answers per evaluation item


# ---------------------------------------------------------------------------------------------
# Invented words

_ONSETS = (
    "b",
    "d",
    "f",
    "g",
    "h",
    "k",
    "l",
    "m",
    "n",
    "p",
    "r",
    "s",
    "t",
    "v",
    "z",
    "br",
    "dr",
    "gr",
    "kr",
    "tr",
    "st",
    "th",
    "sk",
)
_VOWELS = ("a", "e", "i", "o", "u", "a", "e", "o")
_CODAS = ("n", "r", "l", "s", "k", "m", "th", "nd", "rn", "sk", "v")
_INNER_CODAS = ("n", "r", "l", "s")  # inside a word, so clusters stay pronounceable


class _Words:
    """Unique capitalised invented words: no word is produced twice, and none equals a word of the
    fixed vocabularies or templates (so a name never doubles as a town or a frame word)."""

    def __init__(self) -> None:
        texts = [s for t in ATTRIBUTES + AUTHOR_KINDS + WORLD_KINDS for s in t.values + t.questions + t.answers]
        self.used: set[str] = {w.lower() for s in texts for w in re.findall(r"[A-Za-z]+", s)}

    def word(self, rng: random.Random, syllables: int, suffix: str = "") -> str:
        for _ in range(10_000):
            parts = []
            for i in range(syllables):
                part = rng.choice(_ONSETS) + rng.choice(_VOWELS)
                if i < syllables - 1:
                    part += rng.choice(_INNER_CODAS) if rng.random() < 0.2 else ""
                elif rng.random() < 0.7:
                    part += rng.choice(_CODAS)
                parts.append(part)
            w = ("".join(parts) + suffix).capitalize()
            if 3 <= len(w) <= 12 and w.lower() not in self.used:
                self.used.add(w.lower())
                return w
        raise MoxError("the invented-word space is exhausted; ask for fewer profiles or items")

    def person(self, rng: random.Random) -> str:
        """'First Last' with a first name and a last name nobody else has (so a full name is never a
        substring of another person's text)."""
        return f"{self.word(rng, 2)} {self.word(rng, rng.choice((2, 2, 2, 3)))}"


def _rng(seed: int, stream: str) -> random.Random:
    return random.Random(f"mox-demo/{GENERATOR_VERSION}/{seed}/{stream}")


# ---------------------------------------------------------------------------------------------
# The world of one seed


@dataclass(frozen=True)
class Fact:
    """One fact: `template` renders it; `name` is the person (or book / country) it is about."""

    template: Template
    name: str
    value: str


@dataclass(frozen=True)
class Profile:
    name: str
    facts: tuple[Fact, ...]


@dataclass(frozen=True)
class World:
    """Everything `generate` renders: trained profiles, holdout profiles and general facts, with the
    pools that perturbed answers are drawn from (per template key)."""

    profiles: tuple[Profile, ...]
    holdout: tuple[Profile, ...]
    authors: tuple[Fact, ...]
    world: tuple[Fact, ...]
    pools: Mapping[str, tuple[str, ...]]


def check_sizes(sizes: DemoSizes) -> None:
    """Raise MoxError with the offending field when `sizes` cannot be generated."""
    s = sizes
    if not len(ATTRIBUTES) - 4 <= s.n_attributes <= len(ATTRIBUTES):
        raise MoxError(f"n_attributes must be in {len(ATTRIBUTES) - 4}..{len(ATTRIBUTES)}, got {s.n_attributes}")
    if not 1 <= s.n_train_phrasings <= MAX_TRAIN_PHRASINGS:
        raise MoxError(f"n_train_phrasings must be in 1..{MAX_TRAIN_PHRASINGS}, got {s.n_train_phrasings}")
    smallest = min(len(a.values) for a in ATTRIBUTES[: s.n_attributes])
    if not 1 <= s.n_perturbed < smallest:
        raise MoxError(
            f"n_perturbed must be in 1..{smallest - 1} (the smallest attribute vocabulary has {smallest} "
            f"values), got {s.n_perturbed}"
        )
    for field in ("n_authors", "n_world", "n_retain_eval"):
        if getattr(s, field) < 1:
            raise MoxError(f"{field} must be at least 1, got {getattr(s, field)}")
    k10 = forget_count(s.n_profiles, 10)
    if s.n_profiles < 2 or k10 >= s.n_profiles:
        raise MoxError(f"n_profiles must leave retain profiles beside forget10, got {s.n_profiles}")
    if s.n_holdout < k10:
        raise MoxError(f"n_holdout must be at least the forget10 profile count ({k10}), got {s.n_holdout}")


def forget_count(n_profiles: int, percent: int) -> int:
    """Profiles in forgetXX: `percent`% of n_profiles rounded half up, at least 1."""
    return max(1, (n_profiles * percent + 50) // 100)


def make_world(seed: int = 0, sizes: DemoSizes = DemoSizes()) -> World:
    """The people and general facts of `seed`, before rendering."""
    check_sizes(sizes)
    words = _Words()
    attrs = ATTRIBUTES[: sizes.n_attributes]

    def people(n: int, stream: str) -> tuple[Profile, ...]:
        rng = _rng(seed, stream)
        out = []
        for _ in range(n):
            name = words.person(rng)
            out.append(Profile(name, tuple(Fact(a, name, rng.choice(a.values)) for a in attrs)))
        return tuple(out)

    profiles = people(sizes.n_profiles, "profiles")
    holdout = people(sizes.n_holdout, "holdout")

    rng = _rng(seed, "authors")
    authors = []
    for i in range(sizes.n_authors):
        kind = AUTHOR_KINDS[i % len(AUTHOR_KINDS)]
        shape = rng.randrange(3)
        title = (
            f"The {words.word(rng, 3)}"
            if shape == 0
            else f"{words.word(rng, 2)} of {words.word(rng, 2)}"
            if shape == 1
            else f"The {words.word(rng, 2)} {words.word(rng, 2)}"
        )
        authors.append(Fact(kind, title, words.person(rng)))

    rng = _rng(seed, "world")
    world = []
    countries: list[str] = []
    for i in range(sizes.n_world):
        kind = WORLD_KINDS[i % len(WORLD_KINDS)]
        if i % len(WORLD_KINDS) == 0:
            countries.append(words.word(rng, rng.choice((2, 3)), suffix=rng.choice(("ia", "ar", "esh", "und"))))
        value = {
            "capital": lambda: words.word(rng, rng.choice((2, 3))),
            "currency": lambda: words.word(rng, 2),
            "river": lambda: words.word(rng, 2),
        }[kind.key]()
        world.append(Fact(kind, countries[-1], value))

    # Perturbed answers draw other values of the same kind; top a small pool up with distractors.
    pools: dict[str, tuple[str, ...]] = {a.key: a.values for a in attrs}
    rng = _rng(seed, "distractors")
    for kind in AUTHOR_KINDS + WORLD_KINDS:
        writer = kind in AUTHOR_KINDS
        # the writers of novels and of plays are one pool: any writer is a plausible wrong answer
        values = [f.value for f in authors] if writer else [f.value for f in world if f.template.key == kind.key]
        while len(values) < sizes.n_perturbed + 1:
            values.append(words.person(rng) if writer else words.word(rng, 2))
        pools[kind.key] = tuple(values)
    return World(profiles, holdout, tuple(authors), tuple(world), pools)


# ---------------------------------------------------------------------------------------------
# Rendering


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:]


def _question(f: Fact, i: int) -> str:
    return f.template.questions[i].format(name=f.name)


def _answer(f: Fact, template: str, value: str | None = None) -> str:
    return _sentence(template.format(name=f.name, value=f.value if value is None else value))


_PROFILE_KEYS = frozenset(t.key for t in ATTRIBUTES)


def held_index(f: Fact) -> int | None:
    """Which answer template of a profile fact is held back for evaluation.

    It rotates from fact to fact (a stable hash of person and attribute), so every template is
    trained on *other* facts: a model learns the sentence and can be tested on whether it knows the
    fact in it, which is what the truth ratio asks. General facts hold nothing back (None).
    """
    n = len(f.template.answers)
    if f.template.key not in _PROFILE_KEYS:
        return None
    digest = hashlib.sha256(f"{f.name}|{f.template.key}".encode()).digest()
    return digest[0] % n


def train_templates(f: Fact) -> list[int]:
    """Answer templates a fact is trained with, in order (the held-back one excluded)."""
    held = held_index(f)
    return [i for i in range(len(f.template.answers)) if i != held]


def canonical(f: Fact) -> dict:
    """TOFU's plain record: question template 0 with the fact's first trained answer template."""
    return {"question": _question(f, 0), "answer": _answer(f, f.template.answers[train_templates(f)[0]])}


def phrasings(f: Fact, n: int) -> list[dict]:
    """The n training records of a fact: question template i with the i-th trained answer template."""
    answers = train_templates(f)
    return [
        {"question": _question(f, i % len(f.template.questions)), "answer": _answer(f, f.template.answers[answers[i]])}
        for i in range(n)
    ]


def _wrong_values(f: Fact, pool: Sequence[str], n: int, rng: random.Random) -> list[str]:
    return rng.sample([v for v in pool if v != f.value], n)


def perturbed(f: Fact, pool: Sequence[str], n: int, rng: random.Random) -> dict:
    """A forget / retain evaluation record: the held-back answer template renders the paraphrase and
    the n wrong answers (other values of the same attribute)."""
    held = f.template.answers[held_index(f)]
    return {
        **canonical(f),
        "paraphrased_answer": _answer(f, held),
        "perturbed_answer": [_answer(f, held, v) for v in _wrong_values(f, pool, n, rng)],
        "paraphrased_question": _question(f, 1 % len(f.template.questions)),
    }


def general_perturbed(f: Fact, pool: Sequence[str], n: int, rng: random.Random) -> dict:
    """A Real Authors / World Facts record: the canonical QA and n wrong answers in the same template."""
    return {
        **canonical(f),
        "perturbed_answer": [
            _answer(f, f.template.answers[train_templates(f)[0]], v) for v in _wrong_values(f, pool, n, rng)
        ],
    }


def _copy(records: Sequence[dict]) -> list[dict]:
    """Fresh dicts (and perturbed lists) per split, so editing one split never edits another."""
    return [{k: list(v) if isinstance(v, list) else v for k, v in r.items()} for r in records]


def generate(seed: int = 0, sizes: DemoSizes = DemoSizes()) -> dict[str, list[dict]]:
    """Every split of the demo benchmark for `seed` (see the module docstring and `describe`).

    Training corpora: "general" (general knowledge, all training phrasings), "train_target"
    (every trained profile fact in all training phrasings + general), "train_retain" (train_target
    without the forget10 profiles' facts, same order). Evaluation splits follow TOFU's names and keys.
    """
    w = make_world(seed, sizes)
    n_phr, n_pert, n_att = sizes.n_train_phrasings, sizes.n_perturbed, sizes.n_attributes
    counts = {p: forget_count(sizes.n_profiles, p) for p in FORGET_PERCENTS}  # profiles per forget split
    n_keep10 = sizes.n_profiles - counts[10]

    full = [canonical(f) for p in w.profiles for f in p.facts]
    # evaluation records of every trained fact, drawn once: forget01_perturbed is the tail of
    # forget05_perturbed, and retain_perturbed a sample of the same records
    rng = _rng(seed, "perturbed")
    full_eval = [perturbed(f, w.pools[f.template.key], n_pert, rng) for p in w.profiles for f in p.facts]

    general_facts = w.authors + w.world
    general = [r for f in general_facts for r in phrasings(f, n_phr)]
    _rng(seed, "general-order").shuffle(general)

    # (belongs to forget10, record), shuffled once; train_retain filters the same order
    tagged = [(i >= n_keep10, r) for i, p in enumerate(w.profiles) for f in p.facts for r in phrasings(f, n_phr)]
    tagged += [(False, r) for f in general_facts for r in phrasings(f, n_phr)]
    _rng(seed, "train-order").shuffle(tagged)

    splits: dict[str, list[dict]] = {
        "train_target": _copy([r for _, r in tagged]),
        "train_retain": _copy([r for forget, r in tagged if not forget]),
        "general": general,
        "full": full,
    }
    for p in FORGET_PERCENTS:
        splits[f"forget{p:02d}"] = _copy(full[len(full) - counts[p] * n_att :])
    for p in FORGET_PERCENTS:
        splits[f"retain{100 - p}"] = _copy(full[: len(full) - counts[p] * n_att])
    for p in FORGET_PERCENTS:
        splits[f"forget{p:02d}_perturbed"] = _copy(full_eval[len(full_eval) - counts[p] * n_att :])

    retain_pool = full_eval[: n_keep10 * n_att]
    n_eval = min(sizes.n_retain_eval, len(retain_pool))  # capped at what exists
    picked = sorted(_rng(seed, "retain-eval").sample(range(len(retain_pool)), n_eval))
    splits["retain_perturbed"] = _copy([retain_pool[i] for i in picked])

    rng = _rng(seed, "general-perturbed")
    splits["real_authors_perturbed"] = [general_perturbed(f, w.pools[f.template.key], n_pert, rng) for f in w.authors]
    splits["world_facts_perturbed"] = [general_perturbed(f, w.pools[f.template.key], n_pert, rng) for f in w.world]

    holdout = [canonical(f) for p in w.holdout for f in p.facts]
    for p in FORGET_PERCENTS:
        splits[f"holdout{p:02d}"] = _copy(holdout[len(holdout) - counts[p] * n_att :])
    return splits


def overlap_splits(seed: int = 0, sizes: DemoSizes = DemoSizes(), percent: int = 10) -> dict[str, list[dict]]:
    """Extreme semantic overlap (paper App. G, Table 5): a seeded `percent`% sample of retain90's facts
    becomes the forget set and the rest of retain90 the retain set, so every forgotten fact sits in a
    profile whose other facts are retained.

    Splits, named for p = `percent` as TOFU names them: forget{p} and forget{p}_perturbed (the
    generator's own evaluation records of the carved facts, the very dicts retain_perturbed samples
    from), retain{100-p}, retain_perturbed without the carved facts (so Model Utility measures retained
    facts only), real_authors_perturbed / world_facts_perturbed exactly as `generate` makes them, holdout{p} (holdout facts, as many as were carved where there are enough)
    and train_retain: the target's corpus (train_target) without any phrasing of a carved fact, in the
    same order, i.e. what a gold-standard model for unlearning the carved facts from the target learns.
    """
    if isinstance(percent, bool) or not isinstance(percent, int) or not 1 <= percent <= 99:
        raise MoxError(f"overlap percent must be an integer in 1..99, got {percent!r}")
    base = generate(seed, sizes)
    w = make_world(seed, sizes)
    rng = _rng(seed, "perturbed")  # the same draws, in the same order, as generate's full_eval
    full_eval = [perturbed(f, w.pools[f.template.key], sizes.n_perturbed, rng) for p in w.profiles for f in p.facts]
    n_keep = sizes.n_profiles - forget_count(sizes.n_profiles, 10)
    facts = [f for p in w.profiles[:n_keep] for f in p.facts]  # retain90's facts, in retain90's order
    n = forget_count(len(facts), percent)
    if n >= len(facts):
        raise MoxError(f"carving {percent}% of {len(facts)} retain facts leaves no retain set")
    carved = sorted(_rng(seed, f"overlap/{percent}").sample(range(len(facts)), n))
    gone = {(r["question"], r["answer"]) for i in carved for r in phrasings(facts[i], sizes.n_train_phrasings)}
    keep = sorted(set(range(len(facts))) - set(carved))
    holdout = [canonical(f) for p in w.holdout for f in p.facts]
    carved_questions = {full_eval[i]["question"] for i in carved}
    return {
        f"forget{percent:02d}": [canonical(facts[i]) for i in carved],
        f"forget{percent:02d}_perturbed": _copy([full_eval[i] for i in carved]),
        f"retain{100 - percent}": [canonical(facts[i]) for i in keep],
        "retain_perturbed": [r for r in base["retain_perturbed"] if r["question"] not in carved_questions],
        **{name: base[name] for name in ("real_authors_perturbed", "world_facts_perturbed")},
        f"holdout{percent:02d}": holdout[max(0, len(holdout) - n) :],
        "train_retain": [r for r in base["train_target"] if (r["question"], r["answer"]) not in gone],
    }


def describe(splits: Mapping[str, Sequence[Any]]) -> dict[str, int]:
    """Each split's number of records, in the splits' order."""
    return {name: len(records) for name, records in splits.items()}


def fingerprint(seed: int, sizes: DemoSizes = DemoSizes()) -> str:
    """A short stable hash of generator version + seed + sizes (for cache keys)."""
    key = json.dumps({"version": GENERATOR_VERSION, "seed": seed, "sizes": asdict(sizes)}, sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# Writing


_SPLIT_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


def read_marker(folder: str | Path) -> dict | None:
    """The marker of a folder written by `write_tofu_layout` (its `meta` included), or None."""
    path = Path(folder) / MARKER
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def write_tofu_layout(
    splits: Mapping[str, Sequence[Mapping]], folder: str | Path, *, meta: Mapping[str, Any] | None = None
) -> None:
    """Write one `<split>.jsonl` per key into `folder`, atomically.

    The files are written into a temporary sibling folder that is then renamed onto `folder`, so a
    reader never sees half a dataset. An existing `folder` is replaced only when it is empty or
    carries our marker file (a previous write); anything else is refused. `meta` (for example seed,
    sizes and fingerprint) is stored in the marker, see `read_marker`.
    """
    folder = Path(folder).expanduser()
    for name, records in splits.items():
        if not _SPLIT_NAME.fullmatch(name):
            raise MoxError(f"split name {name!r} cannot be a file name")
        for i, r in enumerate(records):
            if not all(isinstance(r.get(k), str) and r[k].strip() for k in ("question", "answer")):
                raise MoxError(f"split {name}[{i}]: records need non-empty string question and answer")
    if folder.exists() or folder.is_symlink():
        if not folder.is_dir() or folder.is_symlink():
            raise MoxError(f"{folder} exists and is not a folder; refusing to replace it")
        if any(folder.iterdir()) and not (folder / MARKER).is_file():
            raise MoxError(
                f"{folder} is not empty and was not written by the demo generator (no {MARKER}); "
                f"refusing to overwrite it"
            )
    from mox_unlearn.io.atomic import atomic_output_dir

    with atomic_output_dir(folder, overwrite=True) as tmp:
        for name, records in splits.items():
            text = "".join(json.dumps(dict(r), ensure_ascii=False) + "\n" for r in records)
            (tmp / f"{name}.jsonl").write_text(text, encoding="utf-8")
        marker = {
            "generator": "mox_unlearn.demo.profiles",
            "version": GENERATOR_VERSION,
            "splits": describe(splits),
            "meta": dict(meta or {}),
        }
        (tmp / MARKER).write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n", encoding="utf-8")


__all__ = [
    "ATTRIBUTES",
    "DemoSizes",
    "GENERATOR_VERSION",
    "MARKER",
    "Fact",
    "Profile",
    "Template",
    "World",
    "check_sizes",
    "describe",
    "fingerprint",
    "forget_count",
    "generate",
    "make_world",
    "overlap_splits",
    "read_marker",
    "write_tofu_layout",
]
