"""The one engine that runs the model: every method module calls these, none runs the model its own way.

| module | job |
|---|---|
| `generation` | batched greedy/sampled generation with interventions; shared-prefix greedy (with the prompts' logits); per-row biases; per-row patches |
| `prefix` | last-position logits (and residuals) with the prompts' shared prefix run once |
| `continuations` | `PromptCache`: prompt heads run once, short continuations scored many times |
| `sequences` | logits of one padded batch under interventions (`batch_logits`); of a batch of texts (losses) |
| `reads` | activations read at hook points (`read_activations`), the forward stopped after the last read |
| `layers` | forward passes with gradients: the residual at one layer (stopping there), or the logits (from any layer on) |

How a TransformerBridge, its plain HF clone and a HookedTransformer differ is decided here and in
`interp.hooked`, nowhere else: a forward under hooks is `batch_logits` (or `read_activations` when only
activations are wanted), which runs the plain HF clone whenever every hook sits on a residual site.
"""

from interp.runner.continuations import ContinuationOutput, PromptCache
from interp.runner.generation import (
    generate,
    generate_greedy,
    generate_greedy_scored,
    generate_with_row_biases,
    generate_with_row_patches,
)
from interp.runner.layers import (
    can_start_at_layer,
    differentiable_logits,
    frozen,
    layers_from,
    logits_from_layer,
    run_to_layer,
)
from interp.runner.prefix import last_logits, last_logits_chunk, shared_prefix_length
from interp.runner.reads import read_activations
from interp.runner.sequences import batch_last_logits, batch_logits, sequence_logits

__all__ = [
    "ContinuationOutput", "PromptCache", "batch_last_logits", "batch_logits", "can_start_at_layer", "differentiable_logits", "frozen", "generate", "generate_greedy", "generate_greedy_scored", "generate_with_row_biases",
    "generate_with_row_patches", "last_logits", "last_logits_chunk", "layers_from", "logits_from_layer", "read_activations", "run_to_layer", "sequence_logits", "shared_prefix_length",
]
