"""Train sparse autoencoders on a model's residual stream, evaluate them, save them in SAE-Lens format.

Our own small trainer (TopK with the AuxK dead-feature loss of Gao et al. 2024, the standard ReLU SAE
with an L1 penalty weighted by decoder norms, and the gated SAE of Rajamanoharan et al. 2024) on
in-memory activations: it runs on any device and is several times faster than SAE-Lens's runner on CPU.
The result is written as an SAE-Lens folder (`cfg.json` + `sae_weights.safetensors`) that
`sae_lens.SAE.load_from_disk` and `interp.dictionaries.from_saelens_folder` both load, with a training
report beside it.

Modules: `harvest` (activations of a corpus), `trainer` (the SAE and its training loop), `gated` (the
gated SAE and its auxiliary loss), `saving` (SAE-Lens folders), `evaluation` (variance explained, L0,
spliced CE), `pipeline` (all of it per layer).
"""

from interp.sae_training.evaluation import SAEEvaluation, evaluate_sae, reconstruction_stats, spliced_losses
from interp.sae_training.gated import GatedSparseAutoencoder
from interp.sae_training.harvest import Harvest, harvest_activations, tokenize_corpus
from interp.sae_training.pipeline import train_saes_for_model
from interp.sae_training.saving import REPORT_FILE, SAVED_BEFORE_MARKERS, check_sae_targets, save_sae
from interp.sae_training.trainer import SAETrainingConfig, SparseAutoencoder, TrainingLog, train_sae

__all__ = [
    "REPORT_FILE",
    "SAVED_BEFORE_MARKERS",
    "GatedSparseAutoencoder",
    "Harvest",
    "SAEEvaluation",
    "SAETrainingConfig",
    "SparseAutoencoder",
    "TrainingLog",
    "check_sae_targets",
    "evaluate_sae",
    "harvest_activations",
    "reconstruction_stats",
    "save_sae",
    "spliced_losses",
    "tokenize_corpus",
    "train_sae",
    "train_saes_for_model",
]
