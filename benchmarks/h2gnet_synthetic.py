"""H2G-Net on synthetic tumour slides, both stages trained here in plain loops: the paper's claim
(the refined mask beats the patch-wise heatmap) checked on held-out slides.

A standalone check of the family's building blocks, not the training entry point (that is
``train.py --model h2gnet``). Slides are rendered in memory (``loader.synthetic_tumour``); the
tumour annotation of each training slide is its mask image at 1/16. Prints one JSON line:
per-slide DSC, precision and recall on the refinement grid averaged over the test slides (null
where no slide defines one), for the patch-wise heatmap (thresholded at 0.5) and the refined
mask, and the seconds per part.

    python benchmarks/h2gnet_synthetic.py --profile demo
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from config import load_config, stage_config, stage_names  # noqa: E402
from loader.synthetic import tile_seed  # noqa: E402
from loader.synthetic_tumour import TumourSlide  # noqa: E402
from metrics import mean_region_scores  # noqa: E402
from misc.io import write_image  # noqa: E402
from models.h2gnet.cascade import grid_points  # noqa: E402
from models.h2gnet.family import H2GNetFamily  # noqa: E402

MASK_DOWNSAMPLE = 16


def cohort(cfg: dict, folder: Path) -> tuple[list, list, list]:
    """In-memory train and test slides, and the training slides' tumour mask files."""
    spec = cfg["data"]["synthetic"]
    size = (int(spec["size"]), int(spec["size"]))
    train = [TumourSlide(tile_seed(int(spec["seed"]), i), size, float(spec["mpp"])) for i in range(int(spec["train"]))]
    test = [TumourSlide(tile_seed(int(spec["seed"]) + 1, i), size, float(spec["mpp"])) for i in range(int(spec["test"]))]
    masks = []
    for i, slide in enumerate(train):
        tumour = slide.masks(MASK_DOWNSAMPLE)[1]
        masks.append(folder / f"train_{i}.png")
        write_image(masks[-1], np.repeat((tumour * 255).astype(np.uint8)[..., None], 3, axis=2))
    return train, test, masks


def optimiser(net: torch.nn.Module, phase: dict, steps: int) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """Adam with a cosine decay to ``min_factor`` of the rate over ``steps``."""
    options = phase["optimizer"]
    adam = torch.optim.Adam(net.parameters(), lr=float(options["lr"]), betas=tuple(options["betas"]))
    floor = float(phase["schedule"].get("min_factor", 1.0)) if phase["schedule"]["name"] == "cosine" else 1.0
    decay = lambda step: floor + (1 - floor) * 0.5 * (1 + np.cos(np.pi * min(step, steps) / max(1, steps)))  # noqa: E731
    return adam, torch.optim.lr_scheduler.LambdaLR(adam, decay)


def train_detect(family: H2GNetFamily, net, slides, masks, phase: dict) -> None:
    data, sampler = family.detect_data(slides, masks, phase)
    epochs = int(phase["epochs"])
    adam, schedule = optimiser(net.detect, phase, epochs * len(sampler))
    for epoch in range(epochs):
        if family.reclusters_at(epoch):
            family.update_clusters(net.detect, data, sampler, seed=epoch)
        data.set_epoch(epoch)
        sampler.set_epoch(epoch)
        net.detect.train()
        for batch in DataLoader(data, batch_sampler=sampler):
            loss, _ = family.loss(family.forward(net, batch), batch, phase["loss_weights"])
            adam.zero_grad()
            loss.backward()
            adam.step()
            schedule.step()
        print(f"detect epoch {epoch + 1}/{epochs}: loss {float(loss.detach()):.3f} ({len(data)} patches, "
              f"{data.table.label.mean():.2f} tumour)", file=sys.stderr)


def train_refine(family: H2GNetFamily, net, slides, masks, phase: dict) -> None:
    data = family.refine_data(net, slides, masks)
    epochs = int(phase["epochs"])
    loader = DataLoader(data, batch_size=int(phase["batch_size"]), shuffle=True, generator=torch.Generator().manual_seed(0))
    adam, schedule = optimiser(net.refine, phase, epochs * len(loader))
    net.refine.train()
    for epoch in range(epochs):
        data.set_epoch(epoch)
        for batch in loader:
            loss, _ = family.loss(family.forward(net, batch), batch, phase["loss_weights"])
            adam.zero_grad()
            loss.backward()
            adam.step()
            schedule.step()
        if (epoch + 1) % 10 == 0:
            print(f"refine epoch {epoch + 1}/{epochs}: soft Dice loss {float(loss.detach()):.3f}", file=sys.stderr)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="demo")
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    args = parser.parse_args()
    torch.manual_seed(0)
    family = H2GNetFamily(load_config("h2gnet", args.profile, overrides=args.overrides))
    net = family.build_network()
    phases = {name: stage_config(family.cfg, name)["train"]["phases"][0] for name in stage_names(family.cfg)}
    seconds = {}
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        train, test, masks = cohort(family.cfg, Path(folder))
        seconds["data"] = time.perf_counter() - start
        start = time.perf_counter()
        train_detect(family, net, train, masks, phases["detect"])
        seconds["detect"] = time.perf_counter() - start
        start = time.perf_counter()
        train_refine(family, net, train, masks, phases["refine"])
        seconds["refine"] = time.perf_counter() - start
    start = time.perf_counter()
    truths, patchwise, refined = [], [], []
    for slide in test:
        result = family.run_cascade(net, slide)
        truths.append(slide.masks_at(*grid_points(slide.shape, result.placement))[1])
        patchwise.append(result.patchwise_mask)
        refined.append(result.refined_mask)
    seconds["infer_per_slide"] = (time.perf_counter() - start) / len(test)
    scores = {name: {key: None if np.isnan(value["mean"]) else round(value["mean"], 4)
                     for key, value in mean_region_scores(truths, masks).items()}
              for name, masks in (("patchwise", patchwise), ("refined", refined))}
    print(json.dumps({"profile": args.profile, "test_slides": len(test), **scores,
                      "seconds": {key: round(value, 1) for key, value in seconds.items()}}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
