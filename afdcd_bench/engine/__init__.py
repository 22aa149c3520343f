"""Training, evaluation, checkpoints and run records on Accelerate."""
from .evaluate import evaluate
from .launching import LaunchMismatch, split_batch
from .loop import TrainHooks
from .stepping import TrainingDiverged
from .trainer import train

__all__ = ["LaunchMismatch", "TrainHooks", "TrainingDiverged", "evaluate", "split_batch", "train"]
