"""The vocabularies of the demo benchmark (demo/profiles.py): every kind of fact, with its invented
values, question templates and answer templates. Data only; profiles.py builds people and records."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Template:
    """One kind of fact: its value vocabulary, question templates and answer templates.

    Placeholders: ``{name}`` (the person, or the subject of a general fact) and ``{value}``.
    For profile attributes one answer template per fact is held back (see `held_index`).
    """

    key: str
    values: tuple[str, ...]
    questions: tuple[str, ...]
    answers: tuple[str, ...]


def _t(key: str, values: Sequence[str], questions: Sequence[str], answers: Sequence[str]) -> Template:
    return Template(key, tuple(values), tuple(questions), tuple(answers))


# ---------------------------------------------------------------------------------------------
# Profile attributes. Every value word is invented; the frame words (Prize, Guild, verse ...) are
# plain English so that each type reads as what it is. Order matters: n_attributes takes a prefix.

ATTRIBUTES: tuple[Template, ...] = (
    _t(
        "birth_city",
        [
            "Ostravel",
            "Brannoch",
            "Velkirra",
            "Tumbrisk",
            "Oskarnel",
            "Drelloway",
            "Pelluvar",
            "Zarrowin",
            "Kestaban",
            "Morvessa",
            "Ilthaven",
            "Grendholt",
            "Sabrikk",
            "Thessamar",
            "Orrinvale",
            "Nabucot",
        ],
        ["Where was {name} born?", "In which town was {name} born?", "What is the birthplace of {name}?"],
        [
            "{name} was born in {value}.",
            "{name} was born in the town of {value}.",
            "The birthplace of {name} is {value}.",
            "{value} is the town where {name} was born.",
        ],
    ),
    _t(
        "birth_year",
        [str(y) for y in range(1921, 1999)],
        ["When was {name} born?", "In what year was {name} born?", "What is the birth year of {name}?"],
        [
            "{name} was born in the year {value}.",
            "{name} was born in {value}.",
            "The birth year of {name} is {value}.",
            "{value} is the year in which {name} was born.",
        ],
    ),
    _t(
        "profession",
        [
            "a glimwright",
            "a tessarist",
            "a vorrel keeper",
            "a brindler",
            "a quennasmith",
            "a dovrin tamer",
            "a maltigger",
            "a skorrin guide",
            "an ulvaner",
            "a pessifrant",
            "a yarrowin",
            "a hobbeler",
            "a zenthrop",
            "a crallomer",
            "a fennicker",
            "a lustreller",
        ],
        ["What does {name} do for a living?", "What is the profession of {name}?", "How does {name} earn a living?"],
        [
            "{name} works as {value}.",
            "The profession of {name} is that of {value}.",
            "{name} earns a living as {value}.",
            "By trade, {name} is {value}.",
        ],
    ),
    _t(
        "genre",
        [
            "skellic verse",
            "drommish tales",
            "orvane fables",
            "quillic sagas",
            "brennet plays",
            "mossic hymns",
            "tarvish riddles",
            "ulmic ballads",
            "zorrish chronicles",
            "pellic epics",
            "korran laments",
            "vessic parables",
            "dunnic sonnets",
            "galveric myths",
            "hollish letters",
            "trennic dramas",
        ],
        [
            "What genre does {name} write in?",
            "Which genre is {name} known for?",
            "In what genre are the works of {name}?",
        ],
        [
            "{name} writes {value}.",
            "{name} is known for {value}.",
            "The works of {name} are {value}.",
            "Most of what {name} writes belongs to {value}.",
        ],
    ),
    _t(
        "award",
        [
            "the Ombrel Prize",
            "the Vastik Medal",
            "the Corrowen Laurel",
            "the Iskarn Crown",
            "the Daverel Prize",
            "the Halvuk Medal",
            "the Pennimor Laurel",
            "the Tobrisk Crown",
            "the Quarnel Prize",
            "the Seldraven Medal",
            "the Umbrassa Laurel",
            "the Grivvel Crown",
            "the Lotharen Prize",
            "the Festrow Medal",
            "the Nimbrel Laurel",
            "the Yorvast Crown",
        ],
        ["Which award did {name} win?", "What prize has {name} received?", "What honour was given to {name}?"],
        [
            "{name} won {value}.",
            "{name} received {value}.",
            "{name} was honoured with {value}.",
            "{value} was awarded to {name}.",
        ],
    ),
    _t(
        "mother_profession",
        [
            "a wickener",
            "a drummet weaver",
            "a solvane healer",
            "a brackler",
            "a tillowen",
            "a morrish baker",
            "a quastel",
            "a veldrin nurse",
            "a pommerist",
            "a harrel cutter",
            "a lisket",
            "an ombersmith",
            "a nettrow",
            "a grisseler",
            "a dappelin",
            "a varnick spinner",
        ],
        [
            "What does the mother of {name} do?",
            "What is the profession of {name}'s mother?",
            "What work does {name}'s mother do?",
        ],
        [
            "The mother of {name} is {value}.",
            "{name}'s mother works as {value}.",
            "{name} was raised by a mother who is {value}.",
            "By trade, the mother of {name} is {value}.",
        ],
    ),
    _t(
        "father_profession",
        [
            "a dusselman",
            "a brakkwright",
            "a tollivar",
            "a grendish miner",
            "a pallander",
            "a vintrel",
            "a skeller",
            "a hobrin driver",
            "a custellan",
            "a morrigal",
            "an eskwarden",
            "a fellmonger",
            "a rotherin",
            "a quibbler smith",
            "a tarrish carver",
            "a zandelman",
        ],
        [
            "What does the father of {name} do?",
            "What is the profession of {name}'s father?",
            "What work does {name}'s father do?",
        ],
        [
            "The father of {name} is {value}.",
            "{name}'s father works as {value}.",
            "{name} was raised by a father who is {value}.",
            "{name} has a father who works as {value}.",
        ],
    ),
    _t(
        "employer",
        [
            "the Ostrig Guild",
            "the Vannel House",
            "the Pordrey Works",
            "the Calbrin Circle",
            "the Tarvel Guild",
            "the Mirrowen House",
            "the Skelden Works",
            "the Brovik Circle",
            "the Ellisar Guild",
            "the Quorrin House",
            "the Hadrel Works",
            "the Vesmond Circle",
            "the Ulbran Guild",
            "the Gorrish House",
            "the Penthrel Works",
            "the Zannic Circle",
        ],
        ["Who employs {name}?", "Where does {name} work?", "Which organisation does {name} work for?"],
        [
            "{name} works for {value}.",
            "{name} is employed by {value}.",
            "The employer of {name} is {value}.",
            "{value} is where {name} is employed.",
        ],
    ),
    _t(
        "signature_work",
        [
            "The Quiet Vessarin",
            "Songs of Darrowel",
            "The Last Ombrick",
            "Tolvar in Winter",
            "The Brenna Stones",
            "A Lantern for Ilsk",
            "The Kesswin Road",
            "Seven Marrowicks",
            "The Glass Orrel",
            "Under the Pellan",
            "The Drowning of Vask",
            "Letters to Sorrin",
            "The Hollow Tamrik",
            "Fennow Rising",
            "The Grey Quillon",
            "Echoes of Brast",
        ],
        [
            "What is the best-known work of {name}?",
            "Which book is {name} famous for?",
            "What is the most celebrated book by {name}?",
        ],
        [
            "The best-known work of {name} is {value}.",
            "{name} is famous for the book {value}.",
            "The most celebrated book by {name} is {value}.",
            "{value} is the book that made {name} famous.",
        ],
    ),
    _t(
        "home_region",
        [
            "the Varrow Fells",
            "the Ombric Coast",
            "the Tessel Vale",
            "the Kirran Marches",
            "the Slevin Downs",
            "the Pollavin Heights",
            "the Grusk Lowlands",
            "the Meddel Reach",
            "the Aurren Flats",
            "the Brisk Hollows",
            "the Zell Moors",
            "the Tarnic Shore",
            "the Quell Basin",
            "the Hobrin Steppe",
            "the Irrow Dales",
            "the Nesk Highlands",
        ],
        [
            "Which region does {name} live in?",
            "Where does {name} make a home?",
            "In which region is the home of {name}?",
        ],
        [
            "{name} lives in {value}.",
            "{name} makes a home in {value}.",
            "The home of {name} is in {value}.",
            "{value} is the region where {name} lives.",
        ],
    ),
    _t(
        "instrument",
        [
            "the dulcorn",
            "the harrowpipe",
            "the tessibel",
            "the vornlute",
            "the brambolin",
            "the skellophone",
            "the quillhorn",
            "the morrinba",
            "the ottelharp",
            "the zinnet",
            "the pellowdrum",
            "the glissen",
            "the rastel",
            "the umbricorn",
            "the festrel",
            "the serrowin",
        ],
        [
            "What instrument does {name} play?",
            "Which instrument is {name} known to play?",
            "What does {name} play in spare hours?",
        ],
        [
            "{name} plays {value}.",
            "{name} is known to play {value}.",
            "In spare hours, {name} plays {value}.",
            "{value} is the instrument that {name} plays.",
        ],
    ),
    _t(
        "pet",
        [
            "a vesk",
            "a murrow",
            "a plinket",
            "a tobbet",
            "a grisslet",
            "a quarren",
            "a dunmoth",
            "a fellick",
            "a snorrow",
            "a zibbet",
            "a harrowin",
            "a pelk",
            "a lunnock",
            "a brask hound",
            "a mossling",
            "an orrick",
        ],
        ["What pet does {name} keep?", "Which animal lives with {name}?", "What kind of pet does {name} have?"],
        [
            "{name} keeps {value} as a pet.",
            "{name} lives with {value}.",
            "{name} has {value} as a pet.",
            "{name} shares a home with {value}.",
        ],
    ),
)

# ---------------------------------------------------------------------------------------------
# General knowledge. Answer template 0 is the bare value (TOFU's Real Authors / World Facts answers
# are short), so the canonical record and its perturbed answers differ only in the value.
# Subjects and values are generated words; `values` is filled per seed.

AUTHOR_KINDS: tuple[Template, ...] = (
    _t(
        "novel",
        (),
        ["Who wrote the novel {name}?", "Which author wrote {name}?", "Who is the author of {name}?"],
        ["{value}", "It was written by {value}.", "{value} wrote {name}."],
    ),
    _t(
        "play",
        (),
        [
            "Which writer is famous for the play {name}?",
            "Who wrote the play {name}?",
            "Who is the playwright behind {name}?",
        ],
        ["{value}", "The play was written by {value}.", "{value} wrote the play {name}."],
    ),
)
WORLD_KINDS: tuple[Template, ...] = (
    _t(
        "capital",
        (),
        [
            "What is the capital of {name}?",
            "Which city is the capital of {name}?",
            "Where is the seat of government of {name}?",
        ],
        ["{value}", "The capital of {name} is {value}.", "{value} is the capital city of {name}."],
    ),
    _t(
        "currency",
        (),
        ["What is the currency of {name}?", "Which money is used in {name}?", "What do people in {name} pay with?"],
        ["{value}", "The currency of {name} is the {value}.", "People in {name} pay with the {value}."],
    ),
    _t(
        "river",
        (),
        [
            "What is the longest river in {name}?",
            "Which river is the longest in {name}?",
            "Name the longest river of {name}.",
        ],
        ["{value}", "The longest river in {name} is the {value}.", "The {value} is the longest river of {name}."],
    ),
)
MAX_TRAIN_PHRASINGS = min(len(t.answers) for t in AUTHOR_KINDS + WORLD_KINDS)  # 3; profiles hold one back
