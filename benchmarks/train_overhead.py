"""Ray Train overhead: a training epoch fed by Ray Data vs the same epoch in a plain PyTorch loop.

Both sides run `drray.training.loop.train_epoch` (augmentation on the batch, normalisation, forward,
weighted loss, backward, AdamW step) with the same model, images and batch size, inside one Ray
Train worker (a TorchTrainer, as `drray train` starts it); only the data path differs:

- Ray Train: the worker's shard of a materialised Ray Dataset (`get_dataset_shard` +
  `iter_torch_batches` with a local shuffle buffer), as drray trains;
- plain: the same images held as tensors in the worker's memory, shuffled and sliced per batch.

Epochs alternate (Ray, plain, Ray, plain, ...) in the same process and threads, so machine load
hits both alike; the ratio is the median of the per-round ratios (goal <= 1.15). Images are
pre-decoded random pixels (throughput does not depend on content), weights random. The fixed
cost of starting the run (worker process, process group, dataset split) is printed apart: it
does not grow with epochs.

    python benchmarks/train_overhead.py                          # test_resnet, 192 px, 600 images
    python benchmarks/train_overhead.py --backbone resnet18 --image-size 224 --rounds 3
    python benchmarks/train_overhead.py --smoke-test             # 64 px, 48 images, 2 rounds
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import tempfile
import time

os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
os.environ.setdefault("TQDM_DISABLE", "1")


class InMemoryShard:
    """Stands in for a Ray Data shard: shuffled batches sliced from tensors in memory."""

    def __init__(self, images, labels, seed: int = 0):
        self.images, self.labels, self.epoch, self.seed = images, labels, 0, seed

    def iter_torch_batches(self, batch_size: int, drop_last: bool = False, **_ignored):
        import torch

        g = torch.Generator().manual_seed(self.seed + self.epoch)
        self.epoch += 1
        order = torch.randperm(len(self.labels), generator=g)
        stop = len(order) - (len(order) % batch_size if drop_last else 0)
        for i in range(0, stop, batch_size):
            idx = order[i:i + batch_size]
            yield {"image": self.images[idx], "label": self.labels[idx]}


def worker(config: dict) -> list[dict]:
    """Ray Train loop: alternate Ray Data epochs and in-memory epochs; returns their seconds per round."""
    import ray.train
    import torch

    from drray.config import Config
    from drray.models.model import create_model
    from drray.training.train import class_weights
    from drray.training.loop import _collate, train_epoch

    cfg = Config.from_dict(config["config"])
    torch.set_num_threads(max(1, math.ceil(cfg.train.cpus_per_worker)))
    torch.manual_seed(0)
    shard = ray.train.get_dataset_shard("train")
    # Warm-up pass, which also gives the plain loop its copy of the very same images.
    images, labels = [], []
    for b in shard.iter_torch_batches(batch_size=64, collate_fn=_collate()):
        images.append(b["image"])
        labels.append(b["label"])
    memory = InMemoryShard(torch.cat(images), torch.cat(labels))
    model = create_model(cfg.model.backbone, head=cfg.model.head, image_size=cfg.data.preprocess.image_size,
                         preprocess=cfg.data.preprocess)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    weights = torch.tensor(class_weights(memory.labels.numpy(), cfg.train.balance))
    steps = len(memory.labels) // cfg.train.batch_size
    total = steps * 2 * config["rounds"]
    step, history = 0, []
    for r in range(config["rounds"]):
        seconds = {}
        for name, source in (("ray", shard), ("plain", memory)):
            out = train_epoch(model, opt, source, torch.device("cpu"), cfg=cfg, class_weights=weights, step=step,
                              total_steps=total, warmup_steps=steps, drop_last=True,
                              generator=torch.Generator().manual_seed(r))
            step = out["step"]
            seconds[name] = out["seconds"]
        history.append({"ray_s": seconds["ray"], "plain_s": seconds["plain"], "images": len(memory.labels)})
    return history


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backbone", default="test_resnet")
    p.add_argument("--image-size", type=int, default=192)
    p.add_argument("--n", type=int, default=600, help="training images")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--rounds", type=int, default=4, help="pairs of epochs (Ray, plain)")
    p.add_argument("--cpus", type=float, default=2.0, help="CPUs of the Ray Train worker (= torch threads)")
    p.add_argument("--smoke-test", action="store_true", help="64 px, 48 images, batch 8, 2 rounds")
    args = p.parse_args()
    if args.smoke_test:
        args.image_size, args.n, args.batch_size, args.rounds = 64, 48, 8, 2

    import numpy as np
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from drray.config import Config

    ray.init(address="local", num_cpus=max(2, math.ceil(args.cpus)), include_dashboard=False, log_to_driver=False)
    rng = np.random.default_rng(0)
    rows = [{"image": rng.integers(0, 256, (args.image_size, args.image_size, 3), dtype=np.uint8),
             "label": int(rng.integers(0, 5))} for _ in range(args.n)]
    train = ray.data.from_items(rows).materialize()
    cfg = Config.from_yaml(None, [
        f"model.backbone={args.backbone}", f"data.preprocess.image_size={args.image_size}",
        f"train.batch_size={args.batch_size}", f"train.cpus_per_worker={args.cpus}",
    ])
    with tempfile.TemporaryDirectory(prefix="drray-bench-") as storage:
        trainer = TorchTrainer(
            worker, train_loop_config={"config": cfg.to_dict(), "rounds": args.rounds},
            scaling_config=ScalingConfig(num_workers=1, resources_per_worker={"CPU": args.cpus}),
            run_config=RunConfig(name="train_overhead", storage_path=storage), datasets={"train": train},
        )
        start = time.perf_counter()
        result = trainer.fit()
        wall = time.perf_counter() - start
    ray.shutdown()
    if result.error is not None:
        raise result.error
    history = result.return_value
    ray_s = statistics.median(h["ray_s"] for h in history)
    plain_s = statistics.median(h["plain_s"] for h in history)
    ratio = statistics.median(h["ray_s"] / h["plain_s"] for h in history)
    n = history[0]["images"]
    print(f"{args.backbone}, {args.image_size} px, {n} images, batch {args.batch_size}, "
          f"{args.cpus:g} CPU(s), {len(history)} rounds")
    print(f"plain PyTorch loop (in-memory tensors): {plain_s:7.2f} s/epoch  {n / plain_s:7.1f} images/s")
    print(f"Ray Train + Ray Data shard           : {ray_s:7.2f} s/epoch  {n / ray_s:7.1f} images/s")
    print(f"ratio Ray Train / plain (median of rounds): {ratio:.3f}  (goal <= 1.15)")
    per_round = ", ".join(f"{h['ray_s'] / h['plain_s']:.2f}" for h in history)
    print(f"per round: {per_round}")
    print(f"fixed cost of the run (start-up, warm-up pass, shutdown): "
          f"{wall - sum(h['ray_s'] + h['plain_s'] for h in history):.1f} s of {wall:.1f} s")


if __name__ == "__main__":
    main()
