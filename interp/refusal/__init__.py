"""Refusal: judging it in text, and refusal directions by difference in means, chosen by their effect (Arditi et al. 2024).

The pipeline, with every choice explicit:

1. **Baseline behaviour.** Greedy completions of the training prompts (`filter_new_tokens` tokens),
   judged by a pluggable judge (default: case-insensitive refusal phrases, `phrase_judge`).
2. **Refusal tokens.** The model's own first tokens of its refusals (the greedy first token of each
   refused harmful prompt), most frequent first, kept only where they are more typical of refusals
   than of compliant answers (`derive_refusal_tokens`). Nothing is hard-coded per model.
3. **Refusal score.** log P(refusal tokens) − log P(any other token) of the next-token distribution at
   the last prompt position (`refusal_scores`); > 0 means a refusal is more likely than not.
4. **Filter.** Harmful training prompts the model refuses; harmless ones it does not.
5. **Candidates.** mean(harmful) − mean(harmless) of resid_pre at every layer × every post-instruction
   position (the chat template's tokens after the user message, `post_instruction_count`).
6. **Scores.** For each candidate: the refusal score on harmful prompts with the direction ablated at
   every layer (`interp.steering.Ablate`); the KL divergence of harmless next-token distributions
   under that ablation; the refusal score on harmless prompts with the raw vector added at its layer.
7. **Selection.** Discard candidates in the last `prune_layer_fraction` of layers, with KL above
   `kl_threshold`, or whose addition does not induce refusal (score ≤ `induce_refusal_threshold`);
   choose the lowest ablated refusal score. Selection prompts are disjoint from the prompts that
   make the means. Two optional departures from the paper are in `SelectionConfig`: a relative
   induce-refusal threshold and protecting the first token (the attention sink) from the ablation.

Cost: scoring is forward passes of the selection prompts under each candidate's intervention. They
run on the HF module tree with plain PyTorch hooks (`interp.hooked.plain_hooks`), compute only the last
position's logits, and carry many candidates per forward (`score_candidates`: the prompts tiled once per
candidate, each row block ablating its own direction). The prompts' shared token prefix (system prompt
and template) runs once per candidate into a KV cache, so only the instruction and template tail are
recomputed per prompt. The
KL and addition scores are needed only to filter, so by default they are computed lazily, in order of
ablated refusal score, until a candidate passes (`score_all=True` fills the whole table); the choice is
the same either way.
"""

from interp.refusal.fit import RefusalFit, ablation, fit_refusal_direction, subtraction
from interp.refusal.judging import (
    REFUSAL_PHRASES,
    Judge,
    judge_all,
    make_phrase_judge,
    phrase_judge,
    refusal_rate,
    refusal_scores,
)
from interp.refusal.rates import RefusalRates, load_judge, refusal_rates_under
from interp.refusal.scoring import ablation_hooks, addition_hooks, score_candidates
from interp.refusal.selection import (
    CandidateTable,
    SelectionConfig,
    candidate_vectors,
    choose_candidate,
    first_token_basis,
    select_direction,
)
from interp.refusal.template import (
    RefusalTokens,
    derive_refusal_tokens,
    post_instruction_count,
    require_chat_template,
)

__all__ = [
    "REFUSAL_PHRASES",
    "CandidateTable",
    "Judge",
    "RefusalFit",
    "RefusalRates",
    "RefusalTokens",
    "SelectionConfig",
    "ablation",
    "ablation_hooks",
    "addition_hooks",
    "candidate_vectors",
    "choose_candidate",
    "derive_refusal_tokens",
    "first_token_basis",
    "fit_refusal_direction",
    "judge_all",
    "load_judge",
    "make_phrase_judge",
    "phrase_judge",
    "post_instruction_count",
    "refusal_rate",
    "refusal_rates_under",
    "refusal_scores",
    "score_candidates",
    "require_chat_template",
    "select_direction",
    "subtraction",
]
