"""Loading a foundation checkpoint costs about what torch.load of the file costs (goal: time < 2x, peak memory < 2x size).

A ViT-L/16 (RETFound's encoder, ~1.2 GB in fp32) with random weights is saved in RETFound's MAE layout
(encoder + decoder under 'model', optimizer, scaler, epoch, args); then, each in a fresh process:
- `torch.load` of the file (weights_only=False, the baseline a user would write), every tensor read once;
- drray's `load_checkpoint` into a freshly built backbone (safe unpickling, layout, renames, resampling,
  the sha256 of the file, load_state_dict), minus the time and memory of building the backbone.

    python benchmarks/checkpoint_load.py            # vit_large_patch16_224
    python benchmarks/checkpoint_load.py --smoke-test
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CHILD = r"""
import json, resource, sys, time, torch, timm
mode, name, path = sys.argv[1:4]
def rss(): return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
if mode == "drray":
    from drray.models.checkpoints import load_checkpoint
    backbone = timm.create_model(name, num_classes=5)
    base = rss(); t0 = time.perf_counter()
    report = load_checkpoint(backbone, path, classifier=("head",))
    seconds = time.perf_counter() - t0
    extra = {"layout": report.layout, "loaded": len(report.loaded), "dropped": len(report.dropped)}
else:
    base = rss(); t0 = time.perf_counter()
    obj = torch.load(path, map_location="cpu", weights_only=False)
    # Read every tensor once: a lazily mapped file costs nothing until its pages are touched.
    total = sum(float(v.float().sum()) for v in obj["model"].values())
    seconds = time.perf_counter() - t0
    extra = {}
print(json.dumps({"mode": mode, "seconds": seconds, "peak_bytes": rss() - base, **extra}))
"""


def make_checkpoint(name: str, path: Path) -> int:
    import torch
    import timm

    enc = timm.create_model(name, num_classes=0).state_dict()
    width = next(v for k, v in enc.items() if k == "cls_token").shape[-1]
    decoder = {"mask_token": torch.zeros(1, 1, 512), "decoder_embed.weight": torch.randn(512, width),
               "decoder_pred.weight": torch.randn(768, 512)}
    torch.save({"model": {**enc, **decoder}, "optimizer": {"param_groups": [{"lr": 1e-3}]}, "epoch": 799,
                "scaler": {"scale": 65536.0}, "args": argparse.Namespace(model=name, input_size=224)}, path)
    return path.stat().st_size


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="vit_large_patch16_224")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--smoke-test", action="store_true")
    args = p.parse_args(argv)
    if args.smoke_test:
        args.model, args.repeats = "test_vit", 1
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ckpt.pth"
        size = make_checkpoint(args.model, path)
        rows = []
        for _ in range(args.repeats):
            for mode in ("torch.load", "drray"):
                out = subprocess.run([sys.executable, "-c", CHILD, mode, args.model, str(path)], capture_output=True,
                                     text=True, check=True).stdout.strip().splitlines()[-1]
                rows.append(json.loads(out))
    best = {m: min((r for r in rows if r["mode"] == m), key=lambda r: r["seconds"]) for m in ("torch.load", "drray")}
    for r in rows:
        print(json.dumps(r))
    t, d = best["torch.load"], best["drray"]
    print(f"{args.model}: file {size / 1e9:.2f} GB; torch.load {t['seconds']:.2f} s, drray {d['seconds']:.2f} s "
          f"(time ratio {d['seconds'] / t['seconds']:.2f}, goal < 2); peak memory drray {d['peak_bytes'] / 1e9:.2f} GB "
          f"= {d['peak_bytes'] / size:.2f}x the file (goal < 2; the growth of the process's peak RSS over the "
          f"built backbone)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
