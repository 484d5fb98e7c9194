"""Features and directions as classifiers of multiple-choice answers.

For each question and each option letter the letter is appended as the answer in the model's chat
format (the assistant turn starts "Answer: (" and the letter follows), and the residual stream is read
on that final letter token. Every feature of a `Dictionary` is scored at once — encoder
pre-activations (`kind="encoder"`) or dot products with the unit decoder atoms (`kind="decoder"`) —
as is every given `Direction`; the model's own log-probability of the letter is the reference.

Cost: per batch of questions the prompt (everything before the letter) runs once into a KV cache
(`interp.runner.PromptCache`); each option then runs only its last two tokens. One pass gives the
residuals at every requested layer and the letters' log-probabilities.

Evaluation, without leakage: questions are split into train and test; each score's sign (which end
means "correct") and its binary threshold are fixed on train, features are ranked on train, and every
reported number is on test, with percentile-bootstrap intervals over test questions (an option never
leaves its question). Two readings of a score: the argmax over a question's options (multiple-choice
accuracy), and every (question, option) as a binary correct/incorrect example (AUROC and accuracy).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from einops import rearrange
from jaxtyping import Bool, Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from interp.ab_prompts import MC_FORMAT, ABFormat, encode_letter_prompts, multiple_choice_question
from interp.datasets import MC_LETTERS, MultipleChoice
from interp.dictionaries import Dictionary
from interp.directions import Direction
from interp.display import clip, details, frame, html_table
from interp.hooked import HookedModel, check_layers, d_model
from interp.metrics import auroc, best_thresholds, bootstrap
from interp.probes import train_probe
from interp.runner import PromptCache

ScoreKind = Literal["encoder", "decoder"]
SCORE_KINDS: tuple[str, ...] = ("encoder", "decoder")
KIND_LABELS = {"encoder": "encoder pre-activation", "decoder": "decoder-atom dot product"}
# The assistant's turn starts "Answer: (" and the option letter is the next token (merged with "(" by some
# tokenizers: the final token carries the letter either way).


# ---------------------------------------------------------------------------------------------
# Activations on the answer letters
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LetterActivations:
    """Residuals on each option's letter token and the model's log-probability of that letter."""

    resid: Float[Tensor, "n_questions n_letters n_layers d_model"]
    log_probs: Float[Tensor, "n_questions n_letters"]  # log P(letter | prompt), full-vocabulary softmax
    layers: list[int]
    letters: tuple[str, ...]
    prompts: list[str]  # chat-formatted prompt + assistant prefix (the letter follows)
    site: str = "resid_pre"

    def at(self, layer: int) -> Float[Tensor, "n_questions n_letters d_model"]:
        if layer not in self.layers:
            raise ValueError(f"layer: {layer} was not collected (collected: {self.layers})")
        return self.resid[:, :, self.layers.index(layer)]


@torch.no_grad()
def letter_activations(
    model: HookedModel,
    texts: Sequence[str],
    letters: Sequence[str],
    layers: Sequence[int],
    *,
    fmt: ABFormat = MC_FORMAT,
    site: str = "resid_pre",
    batch_size: int = 16,
    interventions: Sequence[Any] = (),
    progress: bool = True,
) -> LetterActivations:
    """For every text and letter: residuals at `layers` on the letter token, and log P(letter).

    Per batch the prompt heads run once (KV cached); each letter then runs the prompt's last token and
    the letter only. `interventions` apply to every pass (e.g. a planted behaviour in a test).
    """
    layer_list = sorted(set(check_layers(model, list(layers))))
    if batch_size < 1:
        raise ValueError(f"batch_size: expected >= 1, got {batch_size}")
    encoded = encode_letter_prompts(model, list(texts), fmt, tuple(letters), argument="questions")
    n = len(encoded)
    order = sorted(range(n), key=lambda i: len(encoded.heads[i]))  # similar lengths pad less
    resid = torch.empty(n, len(letters), len(layer_list), d_model(model))
    log_probs = torch.empty(n, len(letters))
    starts = range(0, n, batch_size)
    for start in tqdm(starts, desc="option activations", disable=not progress or len(starts) < 2, leave=False):
        rows = torch.tensor(order[start : start + batch_size])
        # One batch of KV cache alive at a time, so memory does not grow with the data set.
        cache = PromptCache(model, [encoded.heads[i] for i in rows.tolist()], batch_size=len(rows),
                            interventions=interventions, progress=False)
        for k, letter_id in enumerate(encoded.answer_ids):
            out = cache.run(encoded.tail + [letter_id], record_layers=layer_list, site=site, score_from=len(encoded.tail))
            resid[rows, k] = out.resid
            log_probs[rows, k] = out.sequence_log_prob
    prompts = [fmt.chat(model, text) + fmt.assistant_prefix for text in texts]
    return LetterActivations(resid, log_probs, layer_list, tuple(letters), prompts, site)


def check_questions(questions: Sequence[MultipleChoice], argument: str = "questions") -> int:
    """The common number of options; a ValueError naming `argument` for an empty or ragged set."""
    if len(questions) == 0:
        raise ValueError(f"{argument}: expected at least one multiple-choice question")
    for index, question in enumerate(questions):
        if not isinstance(question, MultipleChoice):
            raise ValueError(f"{argument}[{index}]: expected a MultipleChoice, got {type(question).__name__}")
    counts = sorted({len(q.choices) for q in questions})
    if len(counts) != 1:
        raise ValueError(f"{argument}: every question needs the same number of options, got {counts}")
    return counts[0]


def option_activations(
    model: HookedModel, questions: Sequence[MultipleChoice], layers: Sequence[int], *, fmt: ABFormat = MC_FORMAT, **kwargs: Any
) -> LetterActivations:
    """`letter_activations` for multiple-choice questions, their choices lettered A, B, ..."""
    n_options = check_questions(questions)
    texts = [multiple_choice_question(q) for q in questions]
    return letter_activations(model, texts, tuple(MC_LETTERS[:n_options]), layers, fmt=fmt, **kwargs)


# ---------------------------------------------------------------------------------------------
# Scores
# ---------------------------------------------------------------------------------------------


def feature_scores(
    dictionary: Dictionary, resid: Float[Tensor, "... d_model"], kind: ScoreKind = "encoder", chunk: int = 4096
) -> Float[Tensor, "... n_atoms"]:
    """Every feature's score: encoder pre-activations, or dot products with the unit decoder atoms."""
    if kind not in SCORE_KINDS:
        raise ValueError(f"kind: expected one of {SCORE_KINDS}, got {kind!r}")
    if kind == "decoder" and dictionary.transcoder:
        raise ValueError(f"kind: {dictionary.source} is a transcoder: its atoms live at {dictionary.output_hook}, not "
                         f"at {dictionary.hook_name} where its features (and these activations) are read; score it "
                         "with kind='encoder'")
    width = dictionary.d_in if kind == "encoder" else dictionary.d_model
    if resid.shape[-1] != width:
        raise ValueError(f"dictionary: width {width} does not match the activations' width {resid.shape[-1]}")
    score = dictionary.encoder_scores if kind == "encoder" else dictionary.decoder_scores
    # Scoring runs where the dictionary lives (a GPU dictionary scores CPU activations on the GPU).
    flat = resid.reshape(-1, resid.shape[-1]).to(dictionary.atoms.device, torch.float32)
    # Rows in chunks: a [rows, n_atoms] block at a time keeps peak memory flat for big dictionaries.
    out = torch.cat([score(flat[i : i + chunk]) for i in range(0, flat.shape[0], chunk)]) if flat.shape[0] else flat.new_zeros(0, dictionary.n_atoms)
    return out.reshape(*resid.shape[:-1], dictionary.n_atoms)


def direction_scores(
    directions: Mapping[str, Direction], acts: LetterActivations
) -> Float[Tensor, "n_questions n_letters n_directions"]:
    """x · direction.vector on each option's letter token, each at its own layer."""
    width = acts.resid.shape[-1]
    columns = []
    for name, direction in directions.items():
        if direction.d_model != width:
            raise ValueError(f"directions[{name!r}]: width {direction.d_model} does not match the model's d_model {width}")
        if direction.site != acts.site:
            raise ValueError(f"directions[{name!r}]: reads {direction.site}, but activations are at {acts.site}")
        columns.append(acts.at(direction.layer) @ direction.vector.float())
    return torch.stack(columns, dim=-1) if columns else acts.resid.new_zeros(*acts.resid.shape[:2], 0)


# ---------------------------------------------------------------------------------------------
# Fit on train, measure on test, bootstrap
# ---------------------------------------------------------------------------------------------


def one_hot_labels(answers: Int[Tensor, "n_questions"], n_options: int) -> Bool[Tensor, "n_questions n_options"]:
    """Which option of each question is correct, as booleans.

    Args:
        answers: `[n_questions]` option indices.
        n_options: options per question.

    Returns:
        `[n_questions, n_options]`, True at each question's answer.

    Raises:
        ValueError: an answer outside `0..n_options - 1`.
    """
    answers = torch.as_tensor(answers).long()
    if answers.numel() and (int(answers.min()) < 0 or int(answers.max()) >= n_options):
        raise ValueError(f"answers: expected indices in 0..{n_options - 1}")
    return torch.nn.functional.one_hot(answers, n_options).bool()


def split_questions(n_questions: int, test_fraction: float = 0.5, seed: int = 0) -> tuple[Int[Tensor, "n_train"], Int[Tensor, "n_test"]]:
    """A seeded split of question indices into (train, test); both sorted, both non-empty."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction: expected in (0, 1), got {test_fraction}")
    if n_questions < 2:
        raise ValueError(f"questions: need at least 2 to split into train and test, got {n_questions}")
    order = torch.randperm(n_questions, generator=torch.Generator().manual_seed(seed))
    n_test = min(max(1, round(test_fraction * n_questions)), n_questions - 1)
    return order[n_test:].sort().values, order[:n_test].sort().values


@dataclass(frozen=True)
class TrainFit:
    """What is fixed on train: each score's sign (+1: high means correct), threshold and train AUROC."""

    sign: Float[Tensor, "s"]
    threshold: Float[Tensor, "s"]  # on the signed score
    train_auroc: Float[Tensor, "s"]  # of the signed score (>= 0.5 by construction)


def fit_on_train(scores: Float[Tensor, "n_q n_opt s"], answers: Int[Tensor, "n_q"]) -> TrainFit:
    """Fix each score's sign and binary threshold on the training questions.

    Args:
        scores: `[n_questions, n_options, n_scores]`, one value per option for every score (feature, direction, ...).
        answers: `[n_questions]`, the index of each question's correct option.

    Returns:
        A `TrainFit`: per score the sign that makes high mean "correct" (by training AUROC), the threshold that
        maximises training accuracy on the signed score, and the training AUROC after the sign (NaN where a score
        is constant).
    """
    labels = one_hot_labels(answers, scores.shape[1]).flatten()
    flat = scores.reshape(-1, scores.shape[-1]).T.double()  # [s, n_q * n_opt]
    raw = auroc(flat, labels)
    sign = torch.where(raw.isnan() | (raw >= 0.5), 1.0, -1.0).double()
    signed = flat * sign[:, None]
    return TrainFit(sign, best_thresholds(signed, labels), torch.where(raw.isnan(), raw, torch.maximum(raw, 1 - raw)))


def _metrics(signed: Float[Tensor, "b n_q n_opt s"], labels: Bool[Tensor, "b n_q n_opt"], threshold: Float[Tensor, "s"]) -> dict[str, Tensor]:
    """Test measures of signed scores, batched over a leading axis (bootstrap resamples)."""
    answers = labels.float().argmax(-1)  # [b, n_q]
    return {
        "auroc": auroc(rearrange(signed, "b q o s -> b s (q o)"), rearrange(labels, "b q o -> b 1 (q o)")),
        "mc_accuracy": (signed.argmax(2) == answers[..., None]).double().mean(1),
        "binary_accuracy": ((signed > threshold.to(signed)) == labels[..., None]).double().mean((1, 2)),
    }


def measure_on_test(scores: Float[Tensor, "n_q n_opt s"], answers: Int[Tensor, "n_q"], fit: TrainFit) -> dict[str, Tensor]:
    """Held-out metrics of every score with the sign and threshold fixed on train.

    Args:
        scores: `[n_questions, n_options, n_scores]` on the test questions.
        answers: `[n_questions]`, the correct option of each.
        fit: what `fit_on_train` chose.

    Returns:
        Name → `[n_scores]` tensor: AUROC and binary accuracy over every (question, option) and the
        multiple-choice accuracy of the argmax over each question's options.
    """
    labels = one_hot_labels(answers, scores.shape[1]).to(scores.device)
    return {k: v[0] for k, v in _metrics((scores.double() * fit.sign)[None], labels[None], fit.threshold).items()}


def bootstrap_metrics(
    scores: Float[Tensor, "n_q n_opt s"], answers: Int[Tensor, "n_q"], fit: TrainFit, *,
    n_bootstrap: int = 1000, seed: int = 0, level: float = 0.95, chunk_elements: int = 20_000_000,
) -> dict[str, Float[Tensor, "s 2"]]:
    """Percentile intervals of the test measures, resampling questions (with their options) with replacement."""
    signed = scores.double() * fit.sign
    labels = one_hot_labels(answers, scores.shape[1]).to(scores.device)
    return bootstrap(
        lambda rows: _metrics(signed[rows], labels[rows], fit.threshold), scores.shape[0], n_bootstrap=n_bootstrap,
        seed=seed, level=level, batch=max(1, chunk_elements // max(1, signed.numel())),  # bounded memory
    )


# ---------------------------------------------------------------------------------------------
# The report: features, directions, probe, model, chance
# ---------------------------------------------------------------------------------------------


@dataclass
class ClassifierRow:
    """One line of the baselines table; test numbers with bootstrap intervals (None where not defined)."""

    name: str
    group: str  # "feature", "random", "direction", "probe", "model", "chance", "biased"
    sign: float
    train_auroc: float
    test_auroc: float
    test_auroc_ci: tuple[float, float] | None
    test_mc_accuracy: float
    test_mc_accuracy_ci: tuple[float, float] | None
    test_binary_accuracy: float
    test_binary_accuracy_ci: tuple[float, float] | None
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class ClassifierReport:
    """The table, the per-feature train/test AUROCs and the test scores behind the figures."""

    rows: list[ClassifierRow]
    n_train_questions: int
    n_test_questions: int
    n_options: int
    layer: int | None
    feature_train_auroc: dict[str, Tensor] = field(default_factory=dict)  # kind -> [n_atoms]
    feature_test_auroc: dict[str, Tensor] = field(default_factory=dict)  # kind -> [n_atoms] (signed on train)
    top_features: dict[str, list[int]] = field(default_factory=dict)
    test_scores: dict[str, Tensor] = field(default_factory=dict)  # row name -> [n_test, n_options], signed
    test_labels: Tensor | None = None  # [n_test, n_options]
    probe_fit: dict[str, Any] | None = None

    def row(self, name: str) -> ClassifierRow:
        for row in self.rows:
            if row.name == name:
                return row
        raise KeyError(name)

    def __repr__(self) -> str:
        best = max((r for r in self.rows if r.test_auroc == r.test_auroc), key=lambda r: r.test_auroc, default=None)
        return clip(f"ClassifierReport({len(self.rows)} rows, {self.n_train_questions} train / {self.n_test_questions} "
                    f"test questions × {self.n_options} options, layer {self.layer}"
                    + (f"; best test AUROC {best.test_auroc:.3f}: {best.name}" if best else "") + ")")

    def _repr_html_(self) -> str:
        rows = [(r.name, r.group, r.train_auroc, r.test_auroc, r.test_auroc_ci, r.test_mc_accuracy, r.test_mc_accuracy_ci,
                 r.note) for r in self.rows]
        return details(repr(self), html_table(("name", "group", "train AUROC", "test AUROC", "95% CI", "test MC accuracy",
                                               "95% CI", "note"), rows))

    def to_frame(self) -> Any:
        """The table: one row per classifier, each interval as `_low`/`_high` columns (a pandas DataFrame)."""
        records = []
        for row in self.rows:
            record = {}
            for key, value in row.to_dict().items():
                if key.endswith("_ci"):
                    record[f"{key}_low"], record[f"{key}_high"] = value if value is not None else (None, None)
                else:
                    record[key] = value
            records.append(record)
        return frame(records)

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows": [row.to_dict() for row in self.rows], "n_train_questions": self.n_train_questions,
            "n_test_questions": self.n_test_questions, "n_options": self.n_options, "layer": self.layer,
            "top_features": self.top_features, "probe": self.probe_fit,
            "feature_auroc_summary": {
                kind: {"train_max": float(self.feature_train_auroc[kind].nan_to_num(0.5).max()),
                       "test_mean": float(self.feature_test_auroc[kind].nanmean()),
                       "n_features": int(self.feature_train_auroc[kind].numel())}
                for kind in self.feature_train_auroc
            },
        }


def _rows(
    names: Sequence[str], group: str, scores: Tensor, answers: Tensor, train: Tensor, test: Tensor,
    n_bootstrap: int, seed: int, notes: Sequence[str] | None = None,
) -> tuple[list[ClassifierRow], Tensor]:
    """Rows for the score columns `scores[..., j]`: fitted on `train` questions, measured on `test`."""
    fit = fit_on_train(scores[train], answers[train])
    measured = measure_on_test(scores[test], answers[test], fit)
    intervals = bootstrap_metrics(scores[test], answers[test], fit, n_bootstrap=n_bootstrap, seed=seed)
    rows = []
    for j, name in enumerate(names):
        def ci(key: str) -> tuple[float, float]:
            return (float(intervals[key][j, 0]), float(intervals[key][j, 1]))

        rows.append(ClassifierRow(
            name, group, float(fit.sign[j]), float(fit.train_auroc[j]), float(measured["auroc"][j]), ci("auroc"),
            float(measured["mc_accuracy"][j]), ci("mc_accuracy"), float(measured["binary_accuracy"][j]),
            ci("binary_accuracy"), notes[j] if notes else "",
        ))
    return rows, scores[test].double() * fit.sign


@dataclass(frozen=True)
class QuestionSplit:
    """What every row is measured with: the answers, the train/test questions and the bootstrap settings."""

    answers: Int[Tensor, "n_questions"]
    train: Int[Tensor, "n_train"]
    test: Int[Tensor, "n_test"]
    n_bootstrap: int
    seed: int


def classifier_report(
    acts: LetterActivations,
    answers: Int[Tensor, "n_questions"],
    *,
    dictionary: Dictionary | None = None,
    kinds: Sequence[ScoreKind] = SCORE_KINDS,
    directions: Mapping[str, Direction] | None = None,
    probe_layer: int | None = None,
    probe_l2: float = 1e-2,
    test_fraction: float = 0.5,
    top_k: int = 10,
    n_random: int = 20,
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> ClassifierReport:
    """Every baseline in one table: top-k features chosen on train (per score kind), random features,
    the given directions, a logistic probe on the full residual at `probe_layer` (an upper bound for a
    linear read-out there), the model's own letter log-probabilities, chance, and — marked biased — the
    seed's number: the best feature and sign chosen on the test data itself.
    """
    answers = torch.as_tensor(answers).long()
    n_q, n_opt = acts.log_probs.shape
    if answers.shape != (n_q,):
        raise ValueError(f"answers: expected {n_q} answers (one per question), got shape {tuple(answers.shape)}")
    train, test = split_questions(n_q, test_fraction, seed)
    split = QuestionSplit(answers, train, test, n_bootstrap, seed)
    report = ClassifierReport([], len(train), len(test), n_opt, dictionary.layer if dictionary is not None else probe_layer)
    report.test_labels = one_hot_labels(answers[test], n_opt)
    if dictionary is not None:
        add_feature_rows(report, acts, dictionary, kinds, split, top_k=top_k, n_random=n_random)
    if directions:
        add_rows(report, split, list(directions), "direction", direction_scores(directions, acts))
    if probe_layer is not None:
        probe_scores = _probe_scores(acts, answers, train, probe_layer, probe_l2, seed, report)
        add_rows(report, split, ["logistic probe (full residual)"], "probe", probe_scores[..., None])
    add_rows(report, split, ["model's own letter log-prob"], "model", acts.log_probs.double()[..., None])
    report.rows.append(ClassifierRow("chance", "chance", 1.0, 0.5, 0.5, None, 1.0 / n_opt, None, 1.0 - 1.0 / n_opt, None,
                                     "binary accuracy of always answering 'incorrect'"))
    return report


def add_rows(
    report: ClassifierReport, split: QuestionSplit, names: Sequence[str], group: str,
    scores: Float[Tensor, "n_q n_opt s"], notes: Sequence[str] | None = None,
) -> None:
    """Rows for the score columns appended to `report`, with their signed test scores (for the figures)."""
    new_rows, signed = _rows(names, group, scores, split.answers, split.train, split.test, split.n_bootstrap, split.seed, notes)
    report.rows.extend(new_rows)
    report.test_scores.update({name: signed[..., j] for j, name in enumerate(names)})


def add_feature_rows(
    report: ClassifierReport, acts: LetterActivations, dictionary: Dictionary, kinds: Sequence[ScoreKind],
    split: QuestionSplit, *, top_k: int, n_random: int,
) -> None:
    """Per score kind: the top-k features chosen on train, the mean of random features, and the best on test."""
    layer = dictionary.layer
    if layer is None or layer not in acts.layers:
        raise ValueError(f"dictionary: reads {dictionary.hook_name!r}, but activations were collected at layers {acts.layers}")
    resid = acts.at(layer)
    for kind in kinds:
        if kind == "encoder" and dictionary.encoder is None:
            continue  # a decoder-only dictionary has dot products only
        if kind == "decoder" and dictionary.transcoder:
            continue  # a transcoder's atoms live at its output site, not where the activations were read
        scores = feature_scores(dictionary, resid, kind)
        label = KIND_LABELS[kind]
        top = rank_features_on_train(report, scores, kind, split, top_k)
        add_rows(report, split, [f"feature {i} ({label})" for i in top], "feature", scores[..., top],
                 [f"rank {r + 1} on train" for r in range(len(top))])
        report.rows.append(random_features_row(scores, label, dictionary.n_atoms, split, n_random))
        report.rows.append(chosen_on_test_row(scores[split.test], report.test_labels, label))


def rank_features_on_train(
    report: ClassifierReport, scores: Float[Tensor, "n_q n_opt n_atoms"], kind: str, split: QuestionSplit, top_k: int
) -> list[int]:
    """The top-k features by train AUROC; every feature's train and test AUROC (signed on train) go in `report`."""
    fit = fit_on_train(scores[split.train], split.answers[split.train])
    report.feature_train_auroc[kind] = fit.train_auroc.float()
    report.feature_test_auroc[kind] = measure_on_test(scores[split.test], split.answers[split.test], fit)["auroc"].float()
    top = fit.train_auroc.nan_to_num(0.0).argsort(descending=True)[:top_k].tolist()
    report.top_features[kind] = top
    return top


def random_features_row(
    scores: Float[Tensor, "n_q n_opt n_atoms"], label: str, n_atoms: int, split: QuestionSplit, n_random: int
) -> ClassifierRow:
    """The mean over `n_random` randomly drawn features: what the top features are to be compared with."""
    generator = torch.Generator().manual_seed(split.seed + 1)
    chosen = torch.randperm(n_atoms, generator=generator)[:n_random].tolist()
    random_rows, _ = _rows([f"random feature {i} ({label})" for i in chosen], "random", scores[..., chosen],
                           split.answers, split.train, split.test, split.n_bootstrap, split.seed)
    return _summary_row(f"random features ({label}), mean of {len(chosen)}", random_rows)


def chosen_on_test_row(
    test_scores: Float[Tensor, "n_test n_opt n_atoms"], test_labels: Bool[Tensor, "n_test n_opt"], label: str
) -> ClassifierRow:
    """The seed's number: the best feature and sign picked on the test data itself (biased upwards)."""
    raw = auroc(test_scores.reshape(-1, test_scores.shape[-1]).T, test_labels.flatten())
    best = int(torch.maximum(raw, 1 - raw).nan_to_num(0.0).argmax())
    best_value = float(torch.maximum(raw[best], 1 - raw[best]))
    return ClassifierRow(
        f"feature {best} ({label}), chosen on test", "biased", float("nan"), float("nan"), best_value, None,
        float("nan"), None, float("nan"), None, "max over all features and both signs on the test data: biased",
    )


def _summary_row(name: str, rows: Sequence[ClassifierRow]) -> ClassifierRow:
    """Mean of several rows; the interval is the 2.5–97.5 % spread over those rows (not a bootstrap)."""
    def stats(key: str) -> tuple[float, tuple[float, float]]:
        values = torch.tensor([getattr(r, key) for r in rows], dtype=torch.float64)
        low, high = torch.nanquantile(values, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
        return float(values.nanmean()), (low, high)

    auc, auc_range = stats("test_auroc")
    mc, mc_range = stats("test_mc_accuracy")
    binary, binary_range = stats("test_binary_accuracy")
    train = float(torch.tensor([r.train_auroc for r in rows]).nanmean())
    return ClassifierRow(name, "random", 1.0, train, auc, auc_range, mc, mc_range, binary, binary_range,
                         "interval: spread over the random features")


def _probe_scores(
    acts: LetterActivations, answers: Tensor, train: Tensor, layer: int, l2: float, seed: int, report: ClassifierReport
) -> Float[Tensor, "n_q n_opt"]:
    resid = acts.at(layer)
    n_opt = resid.shape[1]
    x = resid[train].reshape(-1, resid.shape[-1])
    y = one_hot_labels(answers[train], n_opt).flatten()
    groups = train[:, None].expand(-1, n_opt).flatten()  # a question's options stay on one side of the split
    fit = train_probe(x, y, groups=groups, l2=l2, seed=seed, layer=layer)
    report.probe_fit = {"layer": layer, **fit.to_dict()}
    return fit.probe.logits(resid).double()


__all__ = [
    "KIND_LABELS", "SCORE_KINDS", "ClassifierReport", "ClassifierRow", "LetterActivations", "TrainFit",
    "bootstrap_metrics", "check_questions", "classifier_report", "direction_scores", "feature_scores", "fit_on_train",
    "letter_activations", "one_hot_labels", "option_activations", "split_questions", "measure_on_test",
]
