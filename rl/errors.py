"""Errors that stop a run on purpose (after a checkpoint is written); a dependency-free module, so
the CLI can catch them without importing torch."""


class ActorFailureError(RuntimeError):
    """Actors kept dying (or could not be restarted) beyond the retry budget."""


class NonFiniteStepError(RuntimeError):
    """Too many optimizer steps had a non-finite gradient: the run is diverging."""


class LearnerWorkerError(RuntimeError):
    """A worker of a multi-worker learner failed (an error in its training, or its process died)."""
