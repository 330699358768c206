"""The project's error types: one user-error base that every refusal subclasses.

A :class:`UserError` is bad input or a state the user can fix: its message names the
problem and the fix in one line, and the CLI prints exactly that and exits 2 before
anything is written. Every layer raises a subclass (configs, stores, data, runs), so
the entry points catch one type instead of a list that grows with the adapters.

:class:`NumericalError` is not a user error in that sense: a run met NaN/inf, diverged
or collapsed; the last good state is kept and the CLI exits 3 (the run's ``Error``
event has already said what happened and what to change).
"""

from __future__ import annotations


class UserError(ValueError):
    """Bad input or an unfixable state: the message names the problem and the fix."""


class ConfigError(UserError):
    """A configuration value is invalid; the message names the field and the fix."""


class StoreError(UserError):
    """A store cannot be opened, read or written as asked (missing, damaged, mismatched)."""


class DataError(UserError):
    """Real data cannot be read as asked (missing files, wrong layout, bad shapes)."""


class RunDirError(UserError):
    """The output directory cannot take this run."""


class DistillError(UserError):
    """A distillation cannot start: what does not fit and how to fix it."""


class ExpertsError(UserError):
    """Experts cannot be trained as asked."""


class DataMismatchError(UserError):
    """The real data does not fit the model (classes or image shape): see
    :func:`tesla.domain.data.check_data_fits`, the one place that compares them."""


class BenchError(UserError):
    """A benchmark cannot run as asked (the message names the fix)."""


class PrepareError(UserError):
    """The source cannot be prepared as asked; the message names the path and the fix."""


class ResourceError(UserError):
    """The job cannot fit the machine: the message names the memory it needs at least,
    what is free, and the option that shrinks it (:mod:`tesla.domain.footprint`)."""


class NumericalError(RuntimeError):
    """NaN/inf, divergence or collapsed labels stopped a run; the last good state is kept."""


class TrainingStopped(Exception):
    """A training loop was asked to stop (``should_stop()`` returned True between epochs).

    Not an error of the user's: the experts service turns it into a ``cancelled`` run and
    trains the unfinished experts again from their seeds on resume.

    Attributes:
        epoch: the last completed epoch (its snapshot was already handed out).
    """

    def __init__(self, epoch: int) -> None:
        super().__init__(f"training stopped on request after epoch {epoch}")
        self.epoch = epoch
