"""Self-supervised losses: pure, vectorised functions with shape docstrings.

No collectives happen in here: callers gather targets / negatives explicitly
(``detlab.methods.ops``) and pass the gathered tensors plus their offset.
"""

from detlab.methods.losses.checks import LossInputError
from detlab.methods.losses.contrastive import moco_loss, nt_xent_loss
from detlab.methods.losses.detcon import detcon_loss
from detlab.methods.losses.regression import byol_loss, soco_loss, vicreg_loss, vicreg_terms

__all__ = [
    "LossInputError",
    "byol_loss",
    "detcon_loss",
    "moco_loss",
    "nt_xent_loss",
    "soco_loss",
    "vicreg_loss",
    "vicreg_terms",
]
