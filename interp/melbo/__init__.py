"""MELBO: unsupervised steering vectors (Mack & Turner, "Mechanistically eliciting latent behaviors").

A steering vector θ is added as a bias at a *source* layer, at every position, and learned to
maximise how much it changes the residual stream at a later *target* layer over a set of prompts:

    loss(θ) = − Σ_prompts ( Σ_tokens ‖h_tgt(θ) − h_tgt(0)‖₂^p )^(1/q),    ‖θ‖ = R.

θ lives on the sphere of radius R: each step projects the gradient onto the sphere's tangent space,
takes an AdamW step (amsgrad, betas (0.9, 0.98), no weight decay, as the original code) and
renormalises. Several vectors are learned, each orthogonal to those before.

Where θ is added (`MelboConfig.site`):

- `"resid_pre"` (default): a bias on the residual stream entering block `source_layer`
  (`blocks.{src}.hook_resid_pre`), so the source block itself already sees it.
- `"mlp_out"`: a bias on the MLP output of block `source_layer` (`blocks.{src}.hook_mlp_out`), as the
  original code (a bias on `mlp.down_proj`). Downstream this is exactly a `"resid_pre"` bias at
  `source_layer + 1` (the residual after block s is the residual before block s+1; tested).

Which axis the norm runs over (`MelboConfig.norm_axis`), for one prompt with target activations
Δ[t, j] (token t, hidden unit j):

- `"token"` (default; the formula of the paper): Σ_t ‖Δ[t, :]‖₂^p — the Euclidean norm of each
  token's change over hidden units, raised to p and summed over tokens.
- `"hidden"` (what the original code computes: `(target - unsteered).norm(dim=1)` on a
  `[1, tokens, hidden]` tensor): Σ_j ‖Δ[:, j]‖₂^p — the norm over *tokens* of each hidden unit's
  change, raised to p and summed over hidden units.

Both equal Σ_{t,j} Δ[t, j]² at p = 2 and differ otherwise. (Neither is the literal entrywise
‖Δ‖_p^p = Σ_{t,j} |Δ[t, j]|^p.) q defaults to p, as in the original.

Positions that count in the loss: every real (non-padding) token, except — by default
(`skip_first_token=True`) — each prompt's first real token. On SmolLM2 the residual there has ~100×
the norm of the others (an attention sink) and would dominate the objective.

Two ways to learn several vectors (`MelboConfig.mode`):

- `"sequential"` (the original): vector i is trained alone, with its gradient and iterate projected
  onto the orthogonal complement of vectors 0..i-1.
- `"parallel"`: all vectors in one batch (n_vectors × n_prompts rows per forward); after each step
  the vectors are re-orthonormalised by Gram–Schmidt in order and each vector's gradient is projected
  off the vectors before it. This is subspace iteration: vector i still ends orthogonal to 0..i-1 and,
  for a linear source→target map at p = 2, converges to the i-th right-singular vector, like
  sequential mode (tested).

`orthogonal=False` learns independent vectors (different random starts) instead.

Implementation: the bias is a TransformerLens hook `(name, fn)` at `blocks.{src}.hook_{site}`; the
target is read at `blocks.{tgt-1}.hook_resid_post` (= `blocks.{tgt}.hook_resid_pre`) and nothing after
it runs (`stop_at_layer=tgt`). On a bridge the same hooks run by default (`MelboConfig.fast`) as
PyTorch hooks on its plain HF module tree (`interp.runner.run_to_layer`), which gives the same numbers
without the bridge's per-hook overhead; `fast=False`, other hook points and HookedTransformers go
through `interp.hooked.hooks_on`. All prompts (and, in "parallel" mode, all vectors: row v·B + b is prompt b under vector v) share one left-padded
forward; unsteered target activations are computed once; padding is masked out of the loss through
the attention mask. Model parameters are frozen for the duration (their `requires_grad` flags are
restored after). Seeded and deterministic on CPU.
"""

from interp.melbo.config import (
    DEFAULT_BETAS,
    MODES,
    NORM_AXES,
    SITES,
    MelboConfig,
    MelboResult,
    Mode,
    NormAxis,
    Site,
)
from interp.melbo.learn import (
    RadiusSweep,
    evaluate_losses,
    learn_melbo,
    pick_radius,
    radius_sweep,
    resolve_layers,
    target_changes,
    target_layer_vectors,
)
from interp.melbo.readout import (
    DIGIT_SEPARATOR,
    LIST_LINE,
    REFUSAL,
    label_from_features,
    next_token_probability,
    sparse_reconstruction,
    steered_generations,
    text_features,
    word_token_ids,
)
from interp.melbo.sphere import BackwardFn, learn_on_sphere, loss_mask, melbo_loss, random_init, sphere_ascent
from interp.runner import frozen  # learning holds the model's parameters fixed (also used by MELBO's callers)

__all__ = [
    "BackwardFn",
    "DEFAULT_BETAS",
    "DIGIT_SEPARATOR",
    "LIST_LINE",
    "NORM_AXES",
    "MODES",
    "MelboConfig",
    "MelboResult",
    "Mode",
    "NormAxis",
    "REFUSAL",
    "RadiusSweep",
    "SITES",
    "Site",
    "evaluate_losses",
    "frozen",
    "label_from_features",
    "learn_melbo",
    "learn_on_sphere",
    "loss_mask",
    "melbo_loss",
    "next_token_probability",
    "pick_radius",
    "radius_sweep",
    "random_init",
    "resolve_layers",
    "sparse_reconstruction",
    "sphere_ascent",
    "steered_generations",
    "target_changes",
    "target_layer_vectors",
    "text_features",
    "word_token_ids",
]

# Where each part lives: `config` (what to learn), `sphere` (the objective and ascent on the sphere),
# `learn` (through the model), `readout` (what the vectors do).
