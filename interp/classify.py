"""Features and directions as classifiers of multiple-choice answers.

For each question and each option letter the letter is appended as the answer in the model's chat
format (the assistant turn starts "Answer: (" and the letter follows), and the residual stream is read
on that final letter token. Every feature of a `Dictionary` is scored at once — encoder
pre-activations (`kind="encoder"`) or dot products with the unit decoder atoms (`kind="decoder"`) —
as is every given `Direction`; the model's own log-probability of the letter is the reference.

Cost: per batch of questions the prompt (everything before the letter) runs once into a KV cache
(`interp.caa.PromptCache`); each option then runs only its last two tokens. One pass gives the
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
from jaxtyping import Bool, Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from interp._checks import binary_labels
from interp.caa import ABFormat, PromptCache, encode_letter_prompts, multiple_choice_question
from interp.datasets import MC_LETTERS, MultipleChoice
from interp.dictionaries import Dictionary
from interp.directions import Direction
from interp.hooked import check_layers, d_model

ScoreKind = Literal["encoder", "decoder"]
SCORE_KINDS: tuple[str, ...] = ("encoder", "decoder")
KIND_LABELS = {"encoder": "encoder pre-activation", "decoder": "decoder-atom dot product"}
# The assistant's turn starts "Answer: (" and the option letter is the next token (merged with "(" by some
# tokenizers: the final token carries the letter either way).
MC_FORMAT = ABFormat("answer", None, "Answer: (")


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
    model: Any,
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
    model: Any, questions: Sequence[MultipleChoice], layers: Sequence[int], *, fmt: ABFormat = MC_FORMAT, **kwargs: Any
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
    if resid.shape[-1] != dictionary.d_model:
        raise ValueError(
            f"dictionary: width {dictionary.d_model} does not match the activations' width {resid.shape[-1]}"
        )
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
# AUROC, ROC, thresholds: vectorised over many scores at once
# ---------------------------------------------------------------------------------------------


def average_ranks(values: Float[Tensor, "... n"]) -> Float[Tensor, "... n"]:
    """1-based ranks along the last axis; tied values share the mean of their ranks."""
    ordered, order = values.sort(dim=-1)
    n = values.shape[-1]
    index = torch.arange(n, device=values.device).expand_as(values)
    starts = torch.ones_like(ordered, dtype=torch.bool)
    starts[..., 1:] = ordered[..., 1:] != ordered[..., :-1]
    ends = torch.ones_like(starts)
    ends[..., :-1] = starts[..., 1:]
    first = torch.where(starts, index, torch.zeros_like(index)).cummax(dim=-1).values
    # The last index of each tie group: a running minimum from the right over group ends.
    last = torch.where(ends, index, torch.full_like(index, n)).flip(-1).cummin(dim=-1).values.flip(-1)
    mean_rank = (first + last).double() / 2 + 1
    return torch.empty_like(mean_rank).scatter_(-1, order, mean_rank)


def auroc(scores: Float[Tensor, "... n"], labels: Bool[Tensor, "... n"]) -> Float[Tensor, "..."]:
    """Area under the ROC curve (Mann–Whitney U, ties count half), for every leading index at once.

    `labels` broadcasts against `scores` (e.g. [n] for [n_features, n]). NaN where a row has one class.
    """
    if not torch.isfinite(scores).all():
        raise ValueError("scores: contains NaN or inf")
    labels = binary_labels(labels, device=scores.device)
    if labels.shape[-1] != scores.shape[-1]:
        raise ValueError(f"labels: expected {scores.shape[-1]} labels along the last axis, got {labels.shape[-1]}")
    labels = labels.expand(scores.shape)
    ranks = average_ranks(scores.double())
    n_pos = labels.sum(-1).double()
    n_neg = labels.shape[-1] - n_pos
    u = (ranks * labels).sum(-1) - n_pos * (n_pos + 1) / 2
    return torch.where((n_pos > 0) & (n_neg > 0), u / (n_pos * n_neg).clamp_min(1), torch.full_like(u, float("nan")))


def roc_curve(scores: Float[Tensor, "n"], labels: Bool[Tensor, "n"]) -> tuple[Float[Tensor, "m"], Float[Tensor, "m"]]:
    """(false-positive rate, true-positive rate) at every distinct threshold, from (0, 0) to (1, 1)."""
    ordered, order = scores.double().sort(descending=True)
    hits = binary_labels(labels, device=scores.device)[order].double()
    tp, fp = hits.cumsum(0), (1 - hits).cumsum(0)
    keep = torch.ones_like(ordered, dtype=torch.bool)
    keep[:-1] = ordered[1:] != ordered[:-1]  # the last position of each tie group
    zero = torch.zeros(1, dtype=torch.float64, device=scores.device)
    return torch.cat([zero, fp[keep] / fp[-1].clamp_min(1)]), torch.cat([zero, tp[keep] / tp[-1].clamp_min(1)])


def best_thresholds(scores: Float[Tensor, "s n"], labels: Bool[Tensor, "n"]) -> Float[Tensor, "s"]:
    """Per score, the threshold (predict correct when score > t) with the highest accuracy on these rows."""
    device = scores.device
    ordered, order = scores.double().sort(dim=-1, descending=True)
    labels = labels.to(device).bool()
    hits = labels[order].double()
    n = scores.shape[-1]
    n_neg = n - labels.sum()
    # Cut after the top k (k = 0..n): accuracy = (true positives + true negatives) / n.
    tp = torch.cat([torch.zeros(scores.shape[0], 1, dtype=torch.float64, device=device), hits.cumsum(-1)], dim=-1)
    fp = torch.arange(n + 1, dtype=torch.float64, device=device) - tp
    accuracy = (tp + n_neg - fp) / n
    valid = torch.ones_like(accuracy, dtype=torch.bool)
    valid[:, 1:-1] = ordered[:, :-1] > ordered[:, 1:]  # a cut cannot split tied scores
    k = torch.where(valid, accuracy, torch.full_like(accuracy, -1.0)).argmax(-1)
    upper = torch.cat([torch.full((scores.shape[0], 1), float("inf"), dtype=torch.float64, device=device), ordered], -1)
    lower = torch.cat([ordered, torch.full((scores.shape[0], 1), float("-inf"), dtype=torch.float64, device=device)], -1)
    rows = torch.arange(scores.shape[0], device=device)
    above, below = upper[rows, k], lower[rows, k]
    middle = (above + below) / 2
    return torch.where(torch.isfinite(middle), middle, torch.where(torch.isinf(above), below + 1e-9, above - 1e-9))


# ---------------------------------------------------------------------------------------------
# Fit on train, measure on test, bootstrap
# ---------------------------------------------------------------------------------------------


def one_hot_labels(answers: Int[Tensor, "n_questions"], n_options: int) -> Bool[Tensor, "n_questions n_options"]:
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
    labels = one_hot_labels(answers, scores.shape[1]).flatten()
    flat = scores.reshape(-1, scores.shape[-1]).T.double()  # [s, n_q * n_opt]
    raw = auroc(flat, labels)
    sign = torch.where(raw.isnan() | (raw >= 0.5), 1.0, -1.0).double()
    signed = flat * sign[:, None]
    return TrainFit(sign, best_thresholds(signed, labels), torch.where(raw.isnan(), raw, torch.maximum(raw, 1 - raw)))


def _metrics(signed: Float[Tensor, "b n_q n_opt s"], labels: Bool[Tensor, "b n_q n_opt"], threshold: Float[Tensor, "s"]) -> dict[str, Tensor]:
    """Test measures of signed scores, batched over a leading axis (bootstrap resamples)."""
    b, n_q, n_opt, s = signed.shape
    flat = signed.reshape(b, n_q * n_opt, s).transpose(1, 2)  # [b, s, n]
    answers = labels.float().argmax(-1)  # [b, n_q]
    return {
        "auroc": auroc(flat, labels.reshape(b, 1, n_q * n_opt)),
        "mc_accuracy": (signed.argmax(2) == answers[..., None]).double().mean(1),
        "binary_accuracy": ((signed > threshold.to(signed)) == labels[..., None]).double().mean((1, 2)),
    }


METRICS = ("auroc", "mc_accuracy", "binary_accuracy")


def measure_on_test(scores: Float[Tensor, "n_q n_opt s"], answers: Int[Tensor, "n_q"], fit: TrainFit) -> dict[str, Tensor]:
    labels = one_hot_labels(answers, scores.shape[1]).to(scores.device)
    return {k: v[0] for k, v in _metrics((scores.double() * fit.sign)[None], labels[None], fit.threshold).items()}


def bootstrap_metrics(
    scores: Float[Tensor, "n_q n_opt s"], answers: Int[Tensor, "n_q"], fit: TrainFit, *,
    n_bootstrap: int = 1000, seed: int = 0, level: float = 0.95, chunk_elements: int = 20_000_000,
) -> dict[str, Float[Tensor, "s 2"]]:
    """Percentile intervals of the test measures, resampling questions (with their options) with replacement."""
    if n_bootstrap < 2:
        raise ValueError(f"n_bootstrap: expected >= 2, got {n_bootstrap}")
    n_q = scores.shape[0]
    signed = scores.double() * fit.sign
    labels = one_hot_labels(answers, scores.shape[1]).to(scores.device)
    draws = torch.randint(0, n_q, (n_bootstrap, n_q), generator=torch.Generator().manual_seed(seed))
    step = max(1, chunk_elements // max(1, signed.numel()))  # resamples per chunk: bounded memory
    parts: dict[str, list[Tensor]] = {k: [] for k in METRICS}
    for start in range(0, n_bootstrap, step):
        rows = draws[start : start + step]
        for key, value in _metrics(signed[rows], labels[rows], fit.threshold).items():
            parts[key].append(value)
    tail = (1 - level) / 2
    q = torch.tensor([tail, 1 - tail], dtype=torch.float64, device=signed.device)
    # nanquantile: a resample with one class (tiny test sets) has no AUROC.
    return {k: torch.nanquantile(torch.cat(v), q, dim=0).T for k, v in parts.items()}


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
    rows: list[ClassifierRow] = []
    report = ClassifierReport(rows, len(train), len(test), n_opt, dictionary.layer if dictionary is not None else probe_layer)
    report.test_labels = one_hot_labels(answers[test], n_opt)

    def add(names: Sequence[str], group: str, scores: Tensor, notes: Sequence[str] | None = None) -> None:
        new_rows, signed = _rows(names, group, scores, answers, train, test, n_bootstrap, seed, notes)
        rows.extend(new_rows)
        report.test_scores.update({name: signed[..., j] for j, name in enumerate(names)})

    if dictionary is not None:
        layer = dictionary.layer
        if layer is None or layer not in acts.layers:
            raise ValueError(f"dictionary: reads {dictionary.hook_name!r}, but activations were collected at layers {acts.layers}")
        resid = acts.at(layer)
        for kind in kinds:
            if kind == "encoder" and dictionary.encoder is None:
                continue  # a decoder-only dictionary has dot products only
            scores = feature_scores(dictionary, resid, kind)
            fit = fit_on_train(scores[train], answers[train])
            report.feature_train_auroc[kind] = fit.train_auroc.float()
            report.feature_test_auroc[kind] = measure_on_test(scores[test], answers[test], fit)["auroc"].float()
            top = fit.train_auroc.nan_to_num(0.0).argsort(descending=True)[:top_k].tolist()
            report.top_features[kind] = top
            label = KIND_LABELS[kind]
            add([f"feature {i} ({label})" for i in top], "feature", scores[..., top],
                [f"rank {r + 1} on train" for r in range(len(top))])
            generator = torch.Generator().manual_seed(seed + 1)
            chosen = torch.randperm(dictionary.n_atoms, generator=generator)[:n_random].tolist()
            random_rows, _ = _rows([f"random feature {i} ({label})" for i in chosen], "random", scores[..., chosen],
                                   answers, train, test, n_bootstrap, seed)
            rows.append(_summary_row(f"random features ({label}), mean of {len(chosen)}", random_rows))
            # The seed's number: best feature and sign picked on the test data (biased upwards).
            test_flat = scores[test].reshape(-1, scores.shape[-1]).T
            raw = auroc(test_flat, report.test_labels.flatten())
            best = int(torch.maximum(raw, 1 - raw).nan_to_num(0.0).argmax())
            best_value = float(torch.maximum(raw[best], 1 - raw[best]))
            rows.append(ClassifierRow(
                f"feature {best} ({label}), chosen on test", "biased", float("nan"), float("nan"), best_value, None,
                float("nan"), None, float("nan"), None, "max over all features and both signs on the test data: biased",
            ))
    if directions:
        add(list(directions), "direction", direction_scores(directions, acts))
    if probe_layer is not None:
        add(["logistic probe (full residual)"], "probe", _probe_scores(acts, answers, train, probe_layer, probe_l2, seed, report)[..., None])
    add(["model's own letter log-prob"], "model", acts.log_probs.double()[..., None])
    rows.append(ClassifierRow("chance", "chance", 1.0, 0.5, 0.5, None, 1.0 / n_opt, None, 1.0 - 1.0 / n_opt, None,
                              "binary accuracy of always answering 'incorrect'"))
    return report


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
    from interp.probes import train_probe

    resid = acts.at(layer)
    n_opt = resid.shape[1]
    x = resid[train].reshape(-1, resid.shape[-1])
    y = one_hot_labels(answers[train], n_opt).flatten()
    groups = train[:, None].expand(-1, n_opt).flatten()  # a question's options stay on one side of the split
    fit = train_probe(x, y, groups=groups, l2=l2, seed=seed, layer=layer)
    report.probe_fit = {"layer": layer, **fit.to_dict()}
    return fit.probe.logits(resid).double()


__all__ = [
    "KIND_LABELS", "MC_FORMAT", "SCORE_KINDS", "ClassifierReport", "ClassifierRow", "LetterActivations", "TrainFit",
    "auroc", "average_ranks", "best_thresholds", "bootstrap_metrics", "check_questions", "classifier_report",
    "direction_scores", "feature_scores", "fit_on_train", "letter_activations", "one_hot_labels", "option_activations",
    "roc_curve", "split_questions", "measure_on_test",
]
