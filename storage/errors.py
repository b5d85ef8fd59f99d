"""The two kinds of error the pipeline raises for people, at the bottom layer so every layer
can raise them.

A ``UserError`` says what was wrong in the user's input or setup and what to do; a
``RunFailure`` says why a run could not finish for a reason outside that input (a store that is
down, a model the quality gate refused, a training run elsewhere that failed). The CLI exits 2
and 1 for them, and the flows' log filter shows either as one line; anything else is a bug and
keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """Wrong input or setup; the message names it and what to do."""


class RunFailure(Exception):
    """A run that could not finish for a reason outside the user's input; the message says why."""
