"""The training worker: the process (or each of the torchrun processes) that runs TRL.

``python -m arena_training.worker [JOB_FILE]`` reads a `TrainingJob` from the file or from the
``ARENA_TRAINING_JOB`` environment variable, trains, writes the final model or adapter into the
checkpoint store and prints ``@@arena`` marker lines (started, progress, checkpoint, result or
error) that the service reads from the log. Heavy imports (torch, transformers, TRL) happen here
only, never in the service process.
"""
