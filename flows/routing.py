"""Where the training stage runs: in the pipeline's own flow run, or on a deployment's workers.

A run's ``training_deployment`` parameter decides when it names a deployment or ``local``.
Left empty (null, blank or missing, as the Prefect UI leaves it after editing a deployment's
schedule), the route is the deployment's default: ``$CODEPARROT_TRAINING_DEPLOYMENT``, which
the pipeline deployments set in their job variables, so no form edit can drop it.
"""

from __future__ import annotations

from collections.abc import Mapping

from storage.settings import Settings, current_settings

ROUTE_ENV = Settings.variable("training_deployment")
LOCAL = "local"


def resolve_training_route(
    requested: str | None, environ: Mapping[str, str]
) -> tuple[str | None, str]:
    """(the deployment to train on, or None for this flow run; where that choice came from)."""
    value = (requested or "").strip()
    if value:
        source = "the run's training_deployment parameter"
    else:
        value = current_settings(environ).training_deployment or ""
        source = f"${ROUTE_ENV}, the deployment's default route"
        if not value:
            return None, f"no training_deployment parameter and no ${ROUTE_ENV}"
    if value.lower() == LOCAL:
        return None, source
    return value, source


def describe_route(deployment: str | None, source: str) -> str:
    """The log line saying where training runs and why."""
    where = f"on the deployment {deployment}" if deployment else "in this flow run"
    return f"training runs {where} (from {source})"
