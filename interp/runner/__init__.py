"""The one engine that runs the model: every method module calls these, none runs the model its own way.

| module | job |
|---|---|
| `generation` | batched greedy/sampled generation with interventions; shared-prefix greedy; per-row biases |
| `prefix` | last-position logits (and residuals) with the prompts' shared prefix run once |
| `continuations` | `PromptCache`: prompt heads run once, short continuations scored many times |
| `sequences` | logits at every position of a batch of texts (losses on text) |
| `layers` | forward passes with gradients: the residual at one layer (stopping there), or the logits |

How a TransformerBridge, its plain HF clone and a HookedTransformer differ is decided here and in
`interp.hooked`, nowhere else.
"""

from interp.runner.continuations import ContinuationOutput, PromptCache
from interp.runner.generation import generate, generate_greedy, generate_with_row_biases
from interp.runner.layers import differentiable_logits, frozen, run_to_layer
from interp.runner.prefix import last_logits, last_logits_chunk, shared_prefix_length
from interp.runner.sequences import sequence_logits

__all__ = [
    "ContinuationOutput", "PromptCache", "differentiable_logits", "frozen", "generate", "generate_greedy", "generate_with_row_biases",
    "last_logits", "last_logits_chunk", "run_to_layer", "sequence_logits", "shared_prefix_length",
]
