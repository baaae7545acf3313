"""Where a method's `target` answers for forget prompts come from (a plug-in of the method, not of the loop).

A target source is read or generated once per run, before training, and then paired with the forget
items per (seed, epoch); `TargetAnswers` encodes the pairs on first use. A new source is a subclass of
`TargetSource` named in its method's entry (methods/__init__.py), with no edit to the training loop.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from mox_unlearn.data import RecordSet, encode_qa, load_refusals, refusal_choices
from mox_unlearn.errors import MoxError
from mox_unlearn.io.atomic import write_text_atomic

if TYPE_CHECKING:
    from mox_unlearn.train.run import TrainingRun


class TargetSource:
    """A pool of target answers and, per epoch, which answer each forget item is paired with.

    Hooks, in the order a run calls them:
      check(cfg, forget, retain)  the data fits (before any model is loaded; raise MoxError)
      read(cfg)                   files read before any model is loaded, so a bad one fails fast
      pool(run)                   the answers, once the models are built (run.reference is θ_ref)
      choices(n_items, n_pool, seed, epoch)  the pool index of each forget item this epoch
    """

    name = "custom"
    uses_reference = False  # pool() generates with θ_ref: the run keeps a reference model for it

    def check(self, cfg, forget: RecordSet, retain: RecordSet | None) -> None:
        pass

    def read(self, cfg) -> None:
        pass

    def pool(self, run: TrainingRun) -> list[str]:
        raise NotImplementedError

    def choices(self, n_items: int, n_pool: int, seed: int, epoch: int) -> list[int]:
        """A random answer per item, drawn from a stream of its own (the batch order does not change)."""
        return refusal_choices(n_items, n_pool, seed, epoch)


class Refusals(TargetSource):
    """ "I don't know"-style strings (refusals=FILE, else the packaged list): IdkPO, DPO, targeted MOX."""

    name = "refusal"

    def read(self, cfg) -> None:
        self.answers = load_refusals(cfg.refusals)

    def pool(self, run: TrainingRun) -> list[str]:
        return self.answers


class RetainAnswers(TargetSource):
    """The answer of a random retain item (LLMU's "random" answers)."""

    name = "retain_answer"

    def check(self, cfg, forget: RecordSet, retain: RecordSet | None) -> None:
        if retain is None:
            raise MoxError(f"objective {cfg.objective or cfg.method!r} needs a retain set (--retain)")
        if retain.kind != "qa":
            raise MoxError(f"{cfg.method} needs a question/answer retain set (its answers become targets)")

    def pool(self, run: TrainingRun) -> list[str]:
        return [r["answer"] for r in run.retain.records]


class Alternates(TargetSource):
    """AltPO's alternate answers: θ_ref's greedy answer to each forget question under an instruction to
    answer differently from the true answer; generated once by the main process and cached in
    OUT/alternates.jsonl (reused on --resume), then read by every process."""

    name = "alternate"
    uses_reference = True

    def pool(self, run: TrainingRun) -> list[str]:
        path = run.folder.path / "alternates.jsonl"
        if run.main and not path.is_file():
            write_text_atomic(path, "".join(json.dumps(row) + "\n" for row in generate_alternates(run)))
        run.accelerator.wait_for_everyone()
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if [row["question"] for row in rows] != [rec["question"] for rec in run.forget.records]:
            raise MoxError(f"{path} does not match the forget set; delete it to generate the alternates again")
        return [row["alternate"] for row in rows]

    def choices(self, n_items: int, n_pool: int, seed: int, epoch: int) -> list[int]:
        return list(range(n_items))  # one alternate per item


def generate_alternates(run: TrainingRun) -> list[dict[str, Any]]:
    from mox_unlearn.evaluate.stats import generate_answers

    cfg, forget = run.cfg, run.forget
    prompts = [cfg.alternates_prompt.format(question=rec["question"], answer=rec["answer"]) for rec in forget.records]
    answers = generate_answers(
        run.space.generator(run.model, run.reference),  # LoRA: the model with B = 0, still exactly θ_ref
        run.tokenizer,
        prompts,
        cfg.prompt,
        max_new_tokens=cfg.alternates_max_new_tokens,
        batch_size=cfg.per_device_batch_size,
        desc="altpo: alternates",
    )
    return [
        {"question": rec["question"], "answer": rec["answer"], "alternate": alt}
        for rec, alt in zip(forget.records, answers)
    ]


class TargetAnswers:
    """The forget questions paired with a source's pool, encoded on first use (per item and choice)."""

    def __init__(self, source: TargetSource, pool: list[str], tokenizer, cfg, forget: RecordSet):
        self.source, self.pool, self.tok, self.cfg = source, pool, tokenizer, cfg
        self.questions = [r["question"] for r in forget.records]
        self.encoded: dict[tuple[int, int], dict] = {}

    def choices(self, epoch: int) -> list[int]:
        return self.source.choices(len(self.questions), len(self.pool), self.cfg.seed, epoch)

    def example(self, item: int, choice: int) -> dict:
        key = (item, choice)
        if key not in self.encoded:
            self.encoded[key] = encode_qa(
                self.tok, self.questions[item], self.pool[choice], self.cfg.prompt, self.cfg.max_length
            )
        return self.encoded[key]
