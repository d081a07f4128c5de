"""The Serve application builder: `serve run serve_config.yaml`, `serve run drray.serve.app:build_app model_dir=...`.

    app = build_app(AppArgs(model_dir="runs/demo/model"))   # -> Application: Ingress -> Explainer
    serve.run(app, route_prefix="/")

Deployment options come from the arguments (ServeConfig's fields) and may be overridden per
deployment by serve_config.yaml's `deployments:` section, as Ray Serve does for every application.
"""

# No `from __future__ import annotations` here: Ray reads the builder's annotation as a class to
# validate the YAML `args:` with it.
from typing import Any

from ray.serve import Application

from drray.serve.args import AppArgs
from drray.serve.deployments import Explainer, Ingress

APP_NAME = "drray"


def explainer_options(args: Any) -> dict[str, Any]:
    """`Deployment.options(...)` of the Explainer from the arguments."""
    options: dict[str, Any] = {
        "ray_actor_options": {"num_cpus": args.num_cpus, "num_gpus": args.num_gpus},
        "max_ongoing_requests": args.max_ongoing_requests,
        "user_config": {"max_batch_size": args.max_batch_size, "batch_wait_timeout_s": args.batch_wait_timeout_s},
    }
    if args.autoscaling_config:
        options["autoscaling_config"] = dict(args.autoscaling_config)
    else:
        options["num_replicas"] = args.num_replicas
    return options


def with_chosen_method(args: AppArgs) -> AppArgs:
    """The model's chosen CAM method (its card's `cam_method`, from layer selection) first: the default of
    the API and the page. Unchanged when the card names none or cannot be read here."""
    from drray.models.card import read_card

    try:
        chosen = read_card(args.model_dir).cam_method
    except (OSError, ValueError):  # the replica reports a missing or bad model dir itself
        return args
    if not chosen:
        return args
    return args.model_copy(update={"methods": [chosen] + [m for m in args.methods if m != chosen]})


def build_app(args: AppArgs) -> Application:
    """The application: an Ingress (REST API + page) in front of the Explainer (the model)."""
    if not isinstance(args, AppArgs):
        args = AppArgs.model_validate(dict(args or {}))
    args = with_chosen_method(args.resolved())
    explainer = Explainer.options(**explainer_options(args)).bind(args)
    return Ingress.bind(explainer, args)
