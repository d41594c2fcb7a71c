from .synthetic import BOS, RepeatBatch, RepeatedTokens, induction_mask

__all__ = ["BOS", "RepeatBatch", "RepeatedTokens", "induction_mask"]
