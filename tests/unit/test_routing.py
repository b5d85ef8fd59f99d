"""Where training runs: a run's parameter, else the deployment's default route, else here."""

from __future__ import annotations

import pytest

from flows.routing import ROUTE_ENV, describe_route, resolve_training_route

GPU = "codeparrot-ds-train/gpu"


@pytest.mark.parametrize("requested", [None, "", "  "])
def test_an_empty_parameter_takes_the_deployments_default_route(requested):
    route, source = resolve_training_route(requested, {ROUTE_ENV: GPU})
    assert route == GPU
    assert describe_route(route, source) == (
        f"training runs on the deployment {GPU} (from ${ROUTE_ENV}, the deployment's default route)"
    )


def test_a_named_deployment_or_local_overrides_the_default():
    assert resolve_training_route("other/pool", {ROUTE_ENV: GPU})[0] == "other/pool"
    route, source = resolve_training_route("local", {ROUTE_ENV: GPU})
    assert route is None
    assert describe_route(route, source) == (
        "training runs in this flow run (from the run's training_deployment parameter)"
    )


def test_without_parameter_or_default_training_runs_here():
    assert resolve_training_route(None, {}) == (
        None,
        f"no training_deployment parameter and no ${ROUTE_ENV}",
    )
    assert resolve_training_route(None, {ROUTE_ENV: "LOCAL"})[0] is None
