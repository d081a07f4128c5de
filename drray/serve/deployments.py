"""The two deployments of the application: the Explainer (the model) and the Ingress (HTTP: REST API + Gradio page).

The Ingress builds its FastAPI app on its replica, after its constructor
(`__serve_build_asgi_app__`), so the app, Gradio included, is never pickled and nothing heavy is
imported where the application is only built.
"""

from __future__ import annotations

from typing import Any

from ray import serve

from drray.serve.explainer import PhotoExplainer
from drray.serve.refusals import Refusal

INGRESS_CPUS = 0.25
"""The ingress parses requests, encodes base64 and runs the page's callbacks: light, asynchronous work."""
INGRESS_MAX_ONGOING = 256
"""Ingress requests wait on the Explainer; it must hold enough of them to let batches fill."""

Explainer = serve.deployment(name="Explainer")(PhotoExplainer)
"""The model's deployment: one `PhotoExplainer` per replica."""


class HandleClient:
    """The Explainer as the API and the page call it: through a deployment handle."""

    def __init__(self, handle: Any):
        self.handle = handle

    async def explain(self, data: bytes, **options: Any) -> dict[str, Any] | Refusal:
        return await self.handle.explain.remote(data, **options)

    async def describe(self) -> dict[str, Any]:
        return await self.handle.describe.remote()  # not cached: `serve deploy` may change the batching

    async def ping(self) -> str:
        return await self.handle.ping.remote()


def build_asgi_app(client: Any, args: Any):
    """The FastAPI app of the ingress over an Explainer client: REST API, body-size limit, the page at /ui."""
    from drray.serve.api import make_api
    from drray.serve.ui import mount_ui

    app = make_api(client, args)
    mount_ui(app, client, args)
    return app


@serve.deployment(name="Ingress", ray_actor_options={"num_cpus": INGRESS_CPUS},
                  max_ongoing_requests=INGRESS_MAX_ONGOING)
@serve.ingress()
class Ingress:
    """HTTP in front of the Explainer: /api/v1/..., /healthz, /docs and the page at /ui."""

    def __init__(self, explainer: Any, args: Any):
        self.client = HandleClient(explainer)
        self.args = args

    def __serve_build_asgi_app__(self):
        return build_asgi_app(self.client, self.args)
