"""CAM throughput: forward-only vs drray's fast CAM path vs pytorch-grad-cam, same model, batch and size.

For each model and target (drray.cam.target_layers: the last map at output stride 8, 16 or 32,
and drray's default, strides 8 and 16 fused, "8+16"; a transformer has its one token grid), three
measurements run interleaved in one process
(forward, fast, library, forward, fast, library, ...) so machine noise hits all three alike; the
table gives the median images per second of each and its ratio to forward-only. Forward-only is
the floor a CAM cannot beat: `model(x)` under torch.inference_mode. The fast path is
`CamEngine(model, method, target_stride=s)(x)` (predictions, probabilities and full-size maps on
the CPU). The library is pytorch-grad-cam's class of the same method on the same target layer,
predicted-class targets (the maps only). Random weights (pretrained=False): throughput does not
depend on them. A finer stride costs more: gradients flow back through more of the network. The
`above` column measures how much: the share of the forward's time spent above the lowest target
layer (a forward stopped there is timed too), and `ideal` is the fast/forward ratio if the backward
through those layers cost what their forward does, which is what to expect of any exact gradient.

    python benchmarks/cam_throughput.py                       # 4 models x 3 strides, 384 px, batch 8, CPU
    python benchmarks/cam_throughput.py --strides 8 --no-fused --no-library
    python benchmarks/cam_throughput.py --device cuda --dtype bf16
    python benchmarks/cam_throughput.py --smoke-test          # tiny models, 64 px, 1 round

With --dtype bf16 the forward and the fast path run under torch.autocast; pytorch-grad-cam
cannot (it converts activations to numpy), so its column stays float32.

The input batch is laid out as drray's predictor makes it: prepared images are (B, S, S, 3) uint8
and `model.normalize` permutes them, so the float batch is channels-last in memory and oneDNN runs
the convolutions channels-last on the CPU (CamEngine lays out any CPU batch so: 1.2-1.5x faster
than a contiguous NCHW batch for ResNet and EfficientNet). Every path gets the same batch.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time
from typing import Callable

MODELS = ["resnet50", "efficientnet_b0", "convnext_tiny", "vit_small_patch16_384"]
SMOKE_MODELS = ["test_resnet", "test_efficientnet", "test_convnext", "test_vit"]


def build(name: str, size: int):
    import timm

    kwargs = {"img_size": size} if name.startswith(("vit", "test_vit")) else {}
    return timm.create_model(name, pretrained=False, num_classes=5, **kwargs).eval()


def timed(fn: Callable[[], object], sync: Callable[[], None]) -> tuple[float, float]:
    """(wall seconds, this process's CPU seconds) of one call."""
    sync()
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    sync()
    return time.perf_counter() - wall, time.process_time() - cpu


def strides_of(model, wanted: list[int]) -> list[int]:
    """The wanted strides the model has; a transformer's one token grid whatever was wanted."""
    from drray.cam.target_layers import stride_layers

    table = stride_layers(model)
    return [s for s in wanted if s in table] or list(table)[-1:]


def targets_of(model, args) -> list[tuple[str, dict]]:
    """(label, CamEngine keywords) per target: each wanted stride the model has, then drray's default."""
    from drray.cam.target_layers import resolve_target_layers

    rows = [(str(s), {"target_stride": s}) for s in strides_of(model, args.strides)]
    if args.fused:
        default = resolve_target_layers(model, None)
        if len(default) > 1:  # a model with one grid has no fused default
            rows.append(("+".join(str(r.stride) for r in default), {}))
    return rows


def measure(model, target: dict, args) -> dict[str, tuple[float, float]]:
    """{path: (images per wall second, images per CPU second)}, medians over the rounds."""
    import pytorch_grad_cam as pgc
    import torch

    from drray.cam import CAM_METHODS, CamEngine

    device = torch.device(args.device)
    dtype = torch.bfloat16 if args.dtype == "bf16" else None
    x = torch.randn(args.batch, 3, args.size, args.size, device=device)
    x = x.contiguous(memory_format=torch.channels_last)  # what model.normalize makes of (B, S, S, 3) images
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    engine = CamEngine(model, method=args.method, autocast_dtype=dtype, **target)
    library = None
    if args.library:
        library = getattr(pgc, CAM_METHODS[engine.method].pgc_class)(model, [engine.target_layer],
                                                                      engine.reshape_transform)

    def forward():
        with torch.inference_mode(), torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            return model(x)

    def below():
        """The forward up to the first target layer to run: the part the backward never visits."""
        class Reached(Exception):
            pass

        def stop(*_):
            raise Reached

        handles = [layer.register_forward_hook(stop) for layer in engine.target_layers]
        try:
            forward()
        except Reached:
            pass
        finally:
            for h in handles:
                h.remove()

    runs = {"forward": forward, "below": below, "fast": lambda: engine(x)}
    if library is not None:
        runs["library"] = lambda: library(input_tensor=x, targets=None)
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in runs}
    try:
        for _ in range(args.warmup):
            for fn in runs.values():
                fn()
        for _ in range(args.rounds):
            for key, fn in runs.items():
                times[key].append(timed(fn, sync))
    finally:
        if library is not None:
            library.activations_and_grads.release()
        engine.close()
    return {k: (args.batch / statistics.median(w for w, _ in v), args.batch / statistics.median(c for _, c in v))
            for k, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=MODELS)
    parser.add_argument("--method", default="gradcam", help="a fast method of drray.CAM_METHODS")
    parser.add_argument("--size", type=int, default=384, help="image side in pixels")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved measurements per path (median)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch intra-op threads (CPU)")
    parser.add_argument("--strides", type=int, nargs="+", default=[8, 16, 32],
                        help="target strides to measure (a transformer has one: its patch grid)")
    parser.add_argument("--no-fused", dest="fused", action="store_false",
                        help="skip drray's default target (strides 8 and 16 fused)")
    parser.add_argument("--no-library", dest="library", action="store_false", help="skip pytorch-grad-cam")
    parser.add_argument("--smoke-test", action="store_true", help="tiny timm test models, 64 px, batch 2, 1 round after 1 warm-up")
    args = parser.parse_args()
    if args.smoke_test:
        args.models, args.size, args.batch, args.rounds, args.warmup = SMOKE_MODELS, 64, 2, 1, 1

    import torch

    torch.set_num_threads(args.threads)
    where = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"cpu, {args.threads} threads"
    print(f"CAM throughput: {args.method}, {args.size}x{args.size} px, batch {args.batch}, {args.dtype}, "
          f"channels-last input, {where}; "
          f"median of {args.rounds} interleaved rounds")
    header = (f"{'model':24s} {'stride':>6s} {'forward img/s':>14s} {'fast img/s':>11s} {'fast/fwd':>9s} "
              f"{'above':>6s} {'ideal':>6s} "
              f"{'grad-cam img/s':>15s} {'grad-cam/fwd':>13s} {'fast/grad-cam':>14s} {'cpu-time fast/fwd':>18s}")
    print(header)
    print("-" * len(header))
    for name in args.models:
        model = build(name, args.size).to(args.device)
        for label, target in targets_of(model, args):
            r = measure(model, target, args)
            (fwd, fwd_cpu), (fast, fast_cpu) = r["forward"], r["fast"]
            above = max(0.0, 1.0 - fwd / r["below"][0])  # share of the forward's time above the target
            lib = r["library"][0] if "library" in r else math.nan
            print(f"{name:24s} {label:>6s} {fwd:14.2f} {fast:11.2f} {fast / fwd:8.2f}x {above:6.2f} {1 / (1 + above):5.2f}x "
                  f"{lib:15.2f} {lib / fwd:12.2f}x "
                  f"{fast / lib:13.2f}x {fast_cpu / fwd_cpu:17.2f}x", flush=True)
    print("x: ratio of images per second (wall clock); cpu-time: ratio of images per CPU-second of this process, "
          "steadier on a machine shared with other jobs; above: share of the forward's time spent above the (lowest) "
          "target layer, where the backward must go; ideal: fast/fwd if that backward cost what its forward does "
          "(a convolution's input gradient has the forward's arithmetic), the most an exact gradient method can expect")

if __name__ == "__main__":
    main()
