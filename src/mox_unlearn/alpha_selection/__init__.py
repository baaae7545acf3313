"""Choosing MOX's α without the retrained model that Forget Quality needs (`mox select-alpha`, `--alpha auto`).

α decides everything about a MOX run, and the benchmark's yardstick (FQ: a KS test against a model
retrained without the forget set) needs exactly the model a practitioner does not have. Two signals
need no retraining, and α is cheap to vary (one θ_mem, one extrapolation per α):

  utility   retain answer probability and ROUGE-L recall of greedy answers, each relative to θ_ref's
            own value: "drop" = (ref − value) / ref, so 0.05 means 5 % worse than before unlearning;
  forget    a two-sample KS test of a per-item score on the forget set against a holdout set of the
            same kind that no model was trained on (min-k % probability by default, TOFU's truth ratio
            as an option). A large p-value means the forget set now looks like data the model never saw,
            which is what a retrained model shows too.

The rule (`select_alpha`, pure): the largest α whose worst utility drop is ≤ tolerance and whose KS
p-value is ≥ p_min. Fallbacks, flagged in the result:
  - no α passes both: the largest α within the utility tolerance (forget_indistinguishable=False),
    since it forgets most among those that keep the model useful (α that pass the forget test only
    beyond the tolerance are named in the reason);
  - no α keeps utility: the smallest α of the grid (utility_ok=False), the least damage on offer.
Boundary values pass (drop == tolerance, p == p_min); NaN never passes a test; the curve's order does
not matter and non-monotone curves are taken at face value (the largest passing α wins even when a
smaller one failed).

`alpha_curve` measures the curve (θ_ref as α = 0 first, then each α extrapolated into a scratch folder,
scored, deleted), applies the rule and returns a JSON-able report; `write_selection` writes it with a PNG.

Modules: rule.py (the rule, pure), scoring.py (selection data, membership scores, KS test), curve.py
(the α curve, `--alpha auto`), report.py (JSON, PNG, printed lines).
"""

from mox_unlearn.alpha_selection.curve import (
    alpha_curve,
    check_auto_config,
    check_model_pair,
    point_from_scores,
    select_for_run,
    variant_curves,
)
from mox_unlearn.alpha_selection.report import (
    json_safe,
    plot_curve,
    summary_lines,
    write_selection,
)
from mox_unlearn.alpha_selection.rule import (
    BOTH,
    DEFAULT_GRID,
    MIN_K,
    SCORES,
    SMALLEST,
    UTILITY_ONLY,
    CurvePoint,
    Selection,
    check_rule_settings,
    fmt_alpha,
    indistinguishable,
    relative_drop,
    select_alpha,
    utility_ok,
)
from mox_unlearn.alpha_selection.scoring import (
    ScoreSettings,
    SelectionData,
    check_grid,
    check_settings,
    ks_test,
    load_selection_data,
    score_folder,
    score_model,
    spread_sample,
)

__all__ = [
    "variant_curves",
    "BOTH",
    "CurvePoint",
    "DEFAULT_GRID",
    "MIN_K",
    "SCORES",
    "SMALLEST",
    "ScoreSettings",
    "Selection",
    "SelectionData",
    "UTILITY_ONLY",
    "alpha_curve",
    "check_auto_config",
    "check_grid",
    "check_model_pair",
    "check_rule_settings",
    "check_settings",
    "fmt_alpha",
    "indistinguishable",
    "json_safe",
    "ks_test",
    "load_selection_data",
    "plot_curve",
    "point_from_scores",
    "relative_drop",
    "score_folder",
    "score_model",
    "select_alpha",
    "select_for_run",
    "spread_sample",
    "summary_lines",
    "utility_ok",
    "write_selection",
]
