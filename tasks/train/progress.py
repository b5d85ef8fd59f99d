"""Training progress in the Prefect UI (Prefect side): one progress artifact, updated at every
logged step."""

from __future__ import annotations

import logging
from typing import Any
from uuid import UUID

from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.context import FlowRunContext, TaskRunContext

# Stable key: every run's progress is a new version of the same artifact.
PROGRESS_KEY = "codeparrot-ds-train-progress"


def describe_progress(record: dict[str, Any]) -> str:
    """One line on a logged training step: where it is and how it goes."""
    return (
        f"step {record['step']:,}/{record['total_steps']:,} | loss {record['loss']:.4f} | "
        f"lr {record['lr']:.2e} | {record['tokens_per_second']:,.0f} tokens/s"
    )


class ProgressArtifact:
    """Reports training progress to a Prefect progress artifact, created at the first report.

    A failing update is logged once and otherwise ignored: the UI is not worth a training run.
    """

    def __init__(self, log: logging.Logger | logging.LoggerAdapter) -> None:
        self.log = log
        self.artifact_id: UUID | None = None
        self.failed = False

    @classmethod
    def for_current_run(cls, log) -> ProgressArtifact | None:
        """A reporter for the task or flow run this code runs in; None outside any run."""
        if TaskRunContext.get() is None and FlowRunContext.get() is None:
            return None
        return cls(log)

    def __call__(self, record: dict[str, Any]) -> None:
        """Move the artifact to this record's step."""
        # One decimal: the UI shows the value as given (33.33333333333333%).
        percent = round(100.0 * record["step"] / record["total_steps"], 1)
        description = describe_progress(record)
        try:
            if self.artifact_id is None:
                self.artifact_id = create_progress_artifact(
                    percent, key=PROGRESS_KEY, description=description
                )
            else:
                update_progress_artifact(self.artifact_id, percent, description=description)
        except Exception as err:  # noqa: BLE001 - any API fault; training goes on
            if not self.failed:
                self.log.warning("could not update the training progress artifact: %s", err)
            self.failed = True
