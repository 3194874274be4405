"""Training of the segmentation network on synthetic data only (``pinn-engine train-seg``).

Reproducible from the seed: the dataset is generated from it (in worker processes,
each with a derived seed), and torch is seeded. Held-out synthetic samples (another
seed) give the Dice reported in the model card.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from pinn_engine.device import default_device
from pinn_engine.segmentation.labels import Label
from pinn_engine.segmentation.network import N_CLASSES, UNet, count_parameters
from pinn_engine.segmentation.synth import GENERATOR, make_dataset

CLASS_WEIGHTS = (0.5, 1.0, 1.5, 1.0)  # cross-entropy weight of each Label, in value order


def _dataset_part(args: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    n, seed, version = args
    return make_dataset(n, seed, version)


PART = 250  # samples per generator part; parts, not workers, fix the data


def generate(n: int, seed: int, workers: int = 2, version: int = GENERATOR) -> tuple[np.ndarray, np.ndarray]:
    parts = [(min(PART, n - start), seed * 1000 + i, version) for i, start in enumerate(range(0, n, PART))]
    with mp.get_context("spawn").Pool(workers) as pool:
        chunks = pool.map(_dataset_part, parts)
    return np.concatenate([c[0] for c in chunks]), np.concatenate([c[1] for c in chunks])


def dice_per_class(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Dice of the LV blood pool, myocardium and RV blood pool (columns) per sample (nan where both are empty)."""
    classes = (Label.LV_BLOOD_POOL, Label.MYOCARDIUM, Label.RV_BLOOD_POOL)
    out = np.full((pred.shape[0], len(classes)), np.nan)
    for i, c in enumerate(classes):
        p, t = pred == c, truth == c
        inter = (p & t).sum(axis=(1, 2))
        total = p.sum(axis=(1, 2)) + t.sum(axis=(1, 2))
        out[:, i] = np.where(total > 0, 2 * inter / np.maximum(total, 1), np.nan)
    return out


def loss_fn(logits: torch.Tensor, target: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    ce = F.cross_entropy(logits, target, weight=weights)
    prob = logits.softmax(1)
    onehot = F.one_hot(target, N_CLASSES).permute(0, 3, 1, 2).float()
    inter = (prob * onehot).sum((0, 2, 3))
    denom = prob.sum((0, 2, 3)) + onehot.sum((0, 2, 3))
    dice = 1 - ((2 * inter + 1) / (denom + 1))[1:].mean()  # the heart's classes: all but BACKGROUND (0)
    return ce + dice


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Intensity-driven augmentation per sample: contrast, brightness, noise."""
    b = x.shape[0]
    scale = 0.7 + 0.6 * torch.rand(b, 1, 1, 1, generator=gen)
    offset = 0.1 * (torch.rand(b, 1, 1, 1, generator=gen) - 0.5)
    noise = 0.03 * torch.rand(b, 1, 1, 1, generator=gen) * torch.randn(x.shape, generator=gen)
    return (x * scale + offset + noise).clamp(0, 3)


def predict(model: nn.Module, images: np.ndarray, batch: int = 32) -> np.ndarray:
    model.eval()
    device = next(model.parameters()).device
    out = []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            x = torch.as_tensor(images[i:i + batch], dtype=torch.float32, device=device)
            out.append(model(x).argmax(1).cpu().numpy())
    return np.concatenate(out).astype(np.uint8)


def train(out: Path, seed: int = 0, samples: int = 6000, minutes: float = 100.0, batch: int = 16,
          validation: int = 200, lr: float = 2e-3, steps: int | None = None, workers: int = 2,
          device: str | None = None, generator: int = GENERATOR, log=None) -> dict:
    """Generate data, train, save fp16 weights + metadata to ``out``.

    With ``steps`` the run is reproducible from the seed (same data, batches and
    schedule); ``minutes`` is then only a safety limit. Without it, training stops when
    the time budget is used (the step count is recorded to reproduce the run).
    Data and batch order depend only on the seed (not on ``workers``' count per part:
    the parts are fixed); a GPU, when present, only changes floating-point rounding.
    """
    log = log or (lambda message: print(message, flush=True))
    t_start = time.time()
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    log(f"generating {samples} training + {validation} validation samples (seed {seed})")
    x_train, y_train = generate(samples, seed, workers, generator)
    x_val, y_val = generate(validation, seed + 10_000, workers, generator)
    t_gen = time.time() - t_start
    log(f"  {t_gen:.0f} s")
    dev = torch.device(device) if device else default_device()
    log(f"training on {dev}")
    model = UNet().to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    budget = minutes * 60 - t_gen - 60  # keep a minute for validation and saving
    weights = torch.tensor(CLASS_WEIGHTS, device=dev)
    step, epoch = 0, 0
    t_train = time.time()
    est_steps = None
    losses = []
    def progress() -> float:
        if steps is not None:
            return step / steps
        return (time.time() - t_train) / budget

    while progress() < 1.0 and time.time() - t_train < budget:
        perm = torch.randperm(len(x_train), generator=gen)
        for i in range(0, len(perm) - batch + 1, batch):
            if progress() >= 1.0 or time.time() - t_train >= budget:
                break
            idx = perm[i:i + batch]
            x = _augment(torch.as_tensor(x_train[idx.numpy()], dtype=torch.float32), gen).to(dev)
            y = torch.as_tensor(y_train[idx.numpy()], dtype=torch.long, device=dev)
            # cosine schedule over the run
            for g in opt.param_groups:
                g["lr"] = lr * 0.5 * (1 + np.cos(np.pi * min(progress(), 1.0)))
            model.train()
            opt.zero_grad()
            loss = loss_fn(model(x), y, weights)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            step += 1
            if step % 200 == 0:
                rate = step / (time.time() - t_train)
                est_steps = steps or int(rate * budget)
                log(f"  step {step}/{est_steps} epoch {epoch} loss {np.mean(losses[-200:]):.4f}")
        epoch += 1
    pred = predict(model, x_val.astype(np.float32))
    d = dice_per_class(pred, y_val)
    metrics = {"lv": float(np.nanmean(d[:, 0])), "myocardium": float(np.nanmean(d[:, 1])),
               "rv": float(np.nanmean(d[:, 2]))}
    log(f"held-out synthetic Dice (mean of {validation}): {metrics}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    meta = {
        "seed": seed, "samples": samples, "validation_samples": validation, "batch": batch, "lr": lr,
        "steps": step, "epochs": epoch, "train_minutes": round((time.time() - t_start) / 60, 1),
        "parameters": count_parameters(model), "synthetic_validation_dice": metrics, "torch": str(torch.__version__),
        "device": str(dev), "generator": generator,
    }
    torch.save({"state_dict": state, "meta": meta}, out)
    out.with_suffix(".json").write_text(json.dumps(meta, indent=2))
    log(f"saved {out} ({out.stat().st_size / 1e6:.1f} MB)")
    return meta
