"""Self-explanations in the sparse experiment: each target vector and the features of its best small-k
reconstruction, explained by the model (`interp.selfexplain`), as the seed does for the refusal direction."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from interp._io import atomic_write_text
from interp.dictionaries import Dictionary
from interp.directions import Direction
from interp.headlines import Claim, at, claim
from interp.hooked import HookedModel
from interp.refusal import phrase_judge
from interp.selfexplain import SelfExplainConfig, plot_self_explanations, self_explain

# Words by which an explanation names refusal itself (the phrase judge catches an explanation that refuses).
REFUSAL_WORDS = re.compile(r"\b(refus\w*|declin\w*|reject\w*|den(?:y|ial)|forbid\w*|prohibit\w*|harm\w*|unsafe|"
                           r"illegal|inappropriate|unethical)\b", re.IGNORECASE)


def explain_target(
    model: HookedModel, name: str, direction: Direction, dictionary: Dictionary, features: Sequence[int], out: Path,
    progress: bool = True,
) -> dict[str, Any]:
    """Explain the vector and each listed feature (decoder atom); write the table and its figure."""
    vectors = {f"{name} vector": direction, **{f"feature {i}": dictionary.atoms[i] for i in features}}
    table = self_explain(model, vectors, SelfExplainConfig(), progress=progress)
    plot_self_explanations(table, out / f"self_explanation_{name}.png")
    atomic_write_text(out / f"self_explanation_{name}.md", table.markdown() + "\n")
    return table.to_dict()


def mentions_refusal(text: str) -> bool:
    """Whether a self-explanation mentions refusal (a refusal word, or a refusal phrase)."""
    return bool(REFUSAL_WORDS.search(text)) or phrase_judge("", text)


def explanation_claims(target: str, explanations: Mapping[str, Any] | None) -> list[Claim]:
    """The seed's reading of the refusal direction: its self-explanation is about refusal."""
    if target != "refusal" or not isinstance(explanations, Mapping):
        return []

    def verdict() -> tuple[str, str]:
        rows = [row for row in at(explanations, "rows") if row["name"] == "refusal vector"]
        best = at(explanations, "best", "refusal vector")
        chosen = next(row for row in rows if row["scale"] == best)
        about = [row["scale"] for row in rows if mentions_refusal(row["text"])]
        text = f"at the suggested scale {best:g}: “{' '.join(chosen['text'].split())[:80]}”"
        if mentions_refusal(chosen["text"]):
            return text, "yes"
        if about:
            return f"{text}; refusal named only at scales {', '.join(f'{s:g}' for s in about)}", "partly"
        return f"{text}; no scale names refusal", "no"

    return [claim("[refusal] Self-explanation describes the refusal direction as refusal", verdict)]


def explanation_markdown(target: str, explanations: Mapping[str, Any]) -> list[str]:
    """The suggested scale's explanation of each direction, for summary.md (the full table is in its own file)."""
    lines = ["", f"Self-explanations (`self_explanation_{target}.md`, `.png`; patched at {explanations['hook']}, "
             f"scales × the residual norm there, {explanations['unit_norm']:.1f}; ★ = suggested scale):", ""]
    for name, scale in explanations["best"].items():
        row = next(r for r in explanations["rows"] if r["name"] == name and r["scale"] == scale)
        text = " ".join(row["text"].split()).replace("|", "/")
        lines.append(f"- {name} ★ {scale:g} (self-sim {row['self_similarity']:.3f}, entropy {row['entropy']:.2f}): “{text}”")
    return lines
