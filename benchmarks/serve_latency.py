"""Serve latency: POST /api/v1/explain over loopback vs the Predictor called in-process, batching on and off.

One photograph (the page's real example, scikit-image's retina as a 768 px JPEG) is explained
again and again by 1, 4 and 16 concurrent clients: first in this process
(`Predictor.explain_image(bytes)` from that many threads), then through Ray Serve (httpx clients
on loopback -> proxy -> Ingress -> Explainer) with `max_batch_size` 1 (off) and N (on). Each
level sends the same number of requests after a warm-up; the table gives p50/p95/p99 latency,
throughput and errors, then the ratios the goals are about:

    serve p50 / in-process p50 with one client (batching off): goal <= 1.3
    errors at 16 clients: goal 0

The model is the demo's (test_resnet, ordinal head, 192 px, Ben Graham) with random weights: the
time does not depend on them. The Explainer gets as many torch threads as this process has, so
both sides run the model alike; everything shares the machine's cores (clients included).

    python benchmarks/serve_latency.py                        # demo model, 1/4/16 clients, 48 requests a level
    python benchmarks/serve_latency.py --backbone resnet18 --image-size 224 --batch-size 4
    python benchmarks/serve_latency.py --smoke-test           # 64 px, 1/4 clients, a few requests
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PHOTO = Path(__file__).resolve().parents[1] / "drray" / "serve" / "examples" / "retina_skimage.jpg"


def make_model(out: Path, backbone: str, size: int) -> Path:
    import torch

    from drray.config import PreprocessConfig
    from drray.models.model import create_model, save_model

    torch.manual_seed(0)
    model = create_model(backbone, head="ordinal", image_size=size,
                         preprocess=PreprocessConfig(image_size=size, ben_graham=True))
    return Path(save_model(model.eval(), out))


def summary(latencies: list[float], errors: int, seconds: float, server_ms: list[float]) -> dict[str, float]:
    xs = sorted(latencies) or [float("nan")]

    def pct(q: float) -> float:
        return xs[min(len(xs) - 1, max(0, round(q * (len(xs) - 1))))] * 1000

    return {"p50": statistics.median(xs) * 1000, "p95": pct(0.95), "p99": pct(0.99),
            "rps": len(latencies) / seconds if seconds > 0 else float("nan"), "errors": errors,
            "n": len(latencies), "server": statistics.median(server_ms) if server_ms else float("nan")}


def in_process(predictor, data: bytes, clients: int, requests: int, server_ms: list[float]) -> tuple[list[float], int, float]:
    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()
    left = iter(range(requests))

    def worker():
        nonlocal errors
        while True:
            with lock:
                if next(left, None) is None:
                    return
            t = time.perf_counter()
            try:
                server_ms.append(predictor.explain_image(data)["timings_ms"]["total_ms"])
                ok = True
            except Exception:
                ok = False
            with lock:
                if ok:
                    latencies.append(time.perf_counter() - t)
                else:
                    errors += 1

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        for f in [pool.submit(worker) for _ in range(clients)]:
            f.result()
    return latencies, errors, time.perf_counter() - start


async def over_http(url: str, data: bytes, clients: int, requests: int,
                    server_ms: list[float]) -> tuple[list[float], int, float]:
    import httpx

    latencies: list[float] = []
    errors = 0
    left = iter(range(requests))
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        async def worker():
            nonlocal errors
            while next(left, None) is not None:
                t = time.perf_counter()
                try:
                    r = await client.post("/api/v1/explain", files={"image": ("eye.jpg", data, "image/jpeg")})
                    ok = r.status_code == 200
                except httpx.HTTPError:
                    ok = False
                if ok:
                    latencies.append(time.perf_counter() - t)
                    server_ms.append(r.json()["timings_ms"]["total_ms"])  # the Explainer's own time
                else:
                    errors += 1

        start = time.perf_counter()
        await asyncio.gather(*[worker() for _ in range(clients)])
        return latencies, errors, time.perf_counter() - start


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", default="test_resnet")
    p.add_argument("--image-size", type=int, default=192)
    p.add_argument("--clients", default="1,4,16", help="concurrent clients per level")
    p.add_argument("--requests", type=int, default=24, help="requests per level and round (after a warm-up)")
    p.add_argument("--rounds", type=int, default=2, help="interleaved rounds of every mode")
    p.add_argument("--batch-size", type=int, default=8, help="max_batch_size with batching on")
    p.add_argument("--batch-wait", type=float, default=0.01, help="batch_wait_timeout_s with batching on")
    p.add_argument("--smoke-test", action="store_true", help="64 px, 1 and 4 clients, 6 requests a level")
    args = p.parse_args(argv)
    if args.smoke_test:
        args.image_size, args.clients, args.requests, args.rounds = 64, "1,4", 6, 1
    levels = [int(c) for c in args.clients.split(",")]

    import ray
    import torch
    from ray import serve

    from drray.inference import Predictor
    from drray.serve.app import APP_NAME, build_app
    from drray.serve.args import AppArgs

    data = PHOTO.read_bytes()
    threads = torch.get_num_threads()
    tmp = Path(tempfile.mkdtemp(prefix="drray-serve-bench-"))
    model_dir = make_model(tmp / "model", args.backbone, args.image_size)
    modes = ["in-process", "serve, batching off", f"serve, batching {args.batch_size}"]
    batch_of = {modes[1]: 1, modes[2]: args.batch_size}
    # (mode, clients) -> latencies and errors pooled over the rounds, and seconds spent
    pooled: dict[tuple[str, int], list] = {(m, n): [[], 0, 0.0, []] for m in modes for n in levels}

    def record(mode: str, n: int, result: tuple[list[float], int, float]) -> None:
        lat, err, secs = result
        cell = pooled[(mode, n)]
        cell[0].extend(lat)
        cell[1] += err
        cell[2] += secs

    predictor = Predictor.from_model_dir(model_dir, methods=["gradcam"])
    for _ in range(3):
        predictor.explain_image(data)
    ray.init(address="local", num_cpus=max(2, os.cpu_count() or 2), include_dashboard=False, log_to_driver=False)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    url = f"http://127.0.0.1:{port}"

    def deploy(batch: int) -> None:
        # Same code and arguments but user_config: after the first, a redeploy only reconfigures the replica.
        app_args = AppArgs(model_dir=str(model_dir), run_dir=None, methods=["gradcam"], num_cpus=1,
                           torch_threads=threads, max_batch_size=batch, batch_wait_timeout_s=args.batch_wait,
                           max_ongoing_requests=max(16, 2 * args.batch_size))
        serve.run(build_app(app_args), name=APP_NAME, route_prefix="/")
        asyncio.run(over_http(url, data, 2, 4, []))  # warm-up: connections, first batch

    try:
        # Interleaved rounds (in-process, serve off, serve on, again ...): load on this shared machine
        # changes by the minute, and each mode should see the same mix of it.
        for _ in range(args.rounds):
            for n in levels:
                record(modes[0], n, in_process(predictor, data, n, args.requests, pooled[(modes[0], n)][3]))
            for mode in modes[1:]:
                deploy(batch_of[mode])
                for n in levels:
                    record(mode, n, asyncio.run(over_http(url, data, n, args.requests, pooled[(mode, n)][3])))
    finally:
        predictor.close()
        serve.shutdown()
        ray.shutdown()
    rows = [(m, n, summary(*pooled[(m, n)])) for m in modes for n in levels]

    print(f"POST /api/v1/explain vs Predictor.explain_image in-process: {args.backbone} {args.image_size} px, "
          f"ordinal, gradcam, {PHOTO.name} ({len(data) // 1024} KB); {args.rounds} x {args.requests} requests a level; "
          f"torch threads {threads}; {os.cpu_count()} CPUs")
    print(f"{'mode':<22}{'clients':>8}{'p50 ms':>10}{'p95 ms':>10}{'p99 ms':>10}{'req/s':>9}{'errors':>8}"
          f"{'explainer p50 ms':>18}")
    for label, n, s in rows:
        print(f"{label:<22}{n:>8}{s['p50']:>10.1f}{s['p95']:>10.1f}{s['p99']:>10.1f}{s['rps']:>9.2f}{s['errors']:>8}"
              f"{s['server']:>18.1f}")
    print("(explainer p50: time inside explain_image / the Explainer replica: decode, waiting for the model, model, "
          "render; HTTP, proxy, ingress and handle transport excluded)")
    base = {n: s for label, n, s in rows if label == "in-process"}
    for label in dict.fromkeys(label for label, _, _ in rows if label != "in-process"):
        mine = {n: s for lab, n, s in rows if lab == label}
        ratios = ", ".join(f"{n} clients p50 x{mine[n]['p50'] / base[n]['p50']:.2f} "
                           f"rps x{mine[n]['rps'] / base[n]['rps']:.2f}" for n in levels)
        print(f"{label} vs in-process: {ratios}")
    one = levels[0]
    off = {n: s for lab, n, s in rows if lab == "serve, batching off"}
    print(f"goal serve p50 / in-process p50 at {one} client <= 1.3: {off[one]['p50'] / base[one]['p50']:.2f}")
    worst = max(levels)
    errors = sum(s["errors"] for label, n, s in rows if n == worst and label != "in-process")
    print(f"goal 0 errors at {worst} clients: {errors}")


if __name__ == "__main__":
    main()
