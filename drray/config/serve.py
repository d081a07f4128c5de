"""Section `serve:`: the live explanations (`drray serve`, serve_config.yaml)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from drray.config.checks import check
from drray.rundir import DEFAULT


@dataclass
class ServeConfig:
    """Live explanations (`drray serve`, serve_config.yaml): limits and batching of the Explainer deployment."""

    model_dir: str = DEFAULT.model
    """Model dir served (local path or URI)."""
    host: str = "127.0.0.1"
    """Address the HTTP proxy binds; 127.0.0.1 keeps the API off the network until you choose otherwise."""
    port: int = 8000
    num_replicas: int = 1
    num_cpus: float = 1.0
    """CPUs per Explainer replica."""
    num_gpus: float = 0.0
    """GPUs per Explainer replica (0: CPU)."""
    max_batch_size: int = 1
    """Requests `@serve.batch` groups into one forward pass; 1 turns batching off (on 2 CPU cores batches
    did not pay: see benchmarks/README.md, serve_latency.py)."""
    batch_wait_timeout_s: float = 0.01
    """How long a batch waits to fill before it runs."""
    max_ongoing_requests: int = 16
    """Per replica; requests beyond this queue in the proxy."""
    max_body_mb: float = 20.0
    """Uploads above this size get HTTP 413 before they are read whole."""
    max_image_pixels: int = 64_000_000
    """Decoded images above this many pixels are refused (decompression bombs)."""
    methods: list[str] = field(default_factory=lambda: ["gradcam", "gradcam++"])
    """CAM methods a request may ask for; the first is the default."""
    torch_threads: int | None = None
    """Torch intra-op threads per Explainer replica; None keeps Ray's setting (the replica's whole CPUs, at least 1)."""
    autoscaling_config: dict[str, Any] | None = None
    """Ray Serve autoscaling of the Explainer (min_replicas, max_replicas, target_ongoing_requests, ...);
    when set it replaces num_replicas."""

    def __post_init__(self) -> None:
        self.methods = [self.methods] if isinstance(self.methods, str) else list(self.methods)
        check(self.torch_threads is None or (isinstance(self.torch_threads, int) and self.torch_threads >= 1),
               f"serve.torch_threads must be >= 1 or null, got {self.torch_threads!r}")
        check(self.autoscaling_config is None or isinstance(self.autoscaling_config, dict),
               f"serve.autoscaling_config must be a mapping (min_replicas: 1, max_replicas: 4, ...) or null, "
               f"got {self.autoscaling_config!r}")
        check(bool(self.model_dir), f"serve.model_dir is empty; name a model dir ({DEFAULT.model})")
        check(isinstance(self.port, int) and 0 <= self.port <= 65535, f"serve.port must be 0-65535, got {self.port}")
        check(self.num_replicas >= 1, f"serve.num_replicas must be >= 1, got {self.num_replicas}")
        check(self.num_cpus >= 0 and self.num_gpus >= 0, "serve.num_cpus and serve.num_gpus must be >= 0")
        check(self.max_batch_size >= 1, f"serve.max_batch_size must be >= 1, got {self.max_batch_size}")
        check(self.batch_wait_timeout_s >= 0, f"serve.batch_wait_timeout_s must be >= 0, got {self.batch_wait_timeout_s}")
        check(self.max_ongoing_requests >= 1, f"serve.max_ongoing_requests must be >= 1, got {self.max_ongoing_requests}")
        check(self.max_batch_size <= self.max_ongoing_requests,
               f"serve.max_batch_size ({self.max_batch_size}) is above serve.max_ongoing_requests "
               f"({self.max_ongoing_requests}): a replica could never fill a batch; raise max_ongoing_requests")
        check(self.max_body_mb > 0, f"serve.max_body_mb must be > 0, got {self.max_body_mb}")
        check(self.max_image_pixels > 0, f"serve.max_image_pixels must be > 0, got {self.max_image_pixels}")
        check(len(self.methods) > 0, "serve.methods is empty; name at least one CAM method")
