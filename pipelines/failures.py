"""The failure types every layer raises, classified by what a retry can do about them.

`DeterministicFailure` means the same inputs will fail the same way (bad data, a
rejected gate, a refused drop): Airflow must not retry, a person must look.
Everything else (a service error, a timeout) is transient and is retried; it never
reads as "nothing there" and never changes what readers see.
"""

from __future__ import annotations


class DeterministicFailure(RuntimeError):
    """A failure that a retry cannot fix; the run stops with this message as its report."""


class ValidationFailed(DeterministicFailure):
    """A document batch broke a hard threshold; nothing was indexed."""


class QualityGateFailed(DeterministicFailure):
    """Retrieval quality regressed; readers keep the previous index."""


class MassChangeRefused(DeterministicFailure):
    """A run would delete or rewrite too large a share of the live documents."""


class TrainingDataInvalid(DeterministicFailure):
    """The training data failed validation; nothing was trained."""


class PromotionRejected(DeterministicFailure):
    """An alias move the rules forbid (a failed gate without an override, a moved champion)."""


class IntegrityError(DeterministicFailure):
    """Stored bytes do not match the hash recorded for them (a tampered or corrupt artifact)."""


class UnexplainedAliasMove(DeterministicFailure):
    """A registry alias moved without a recorded gate verdict or override (for example in the MLflow UI)."""
