from .evaluate import evaluate_repeat
from .heads import (
           best_head,
           prefix_matching_score,
           prefix_matching_targets,
           previous_token_score,
)
from .induction import (
           induction_accuracy,
           induction_loss,
           loss_by_position,
           token_losses,
)

__all__ = ["evaluate_repeat", "best_head", "prefix_matching_score", "prefix_matching_targets",
           "previous_token_score", "induction_accuracy", "induction_loss", "loss_by_position", "token_losses"]
