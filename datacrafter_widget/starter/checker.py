"""An independent checker for the starter generator: a small CNN trained only on real renders.

It predicts digit, foreground colour and background colour of a 32x32 image. It is trained only
on real pool renders, with its own render seed, and its accuracy is measured on renders of held-out
source scans, so that "the prompted digit is recognised" is judged by a model that never saw a
generated image nor the generator's training renders.

It ships trained: `python -m datacrafter_widget.starter.checker [--steps N --batch B]` trains it
(a progress bar; 600 steps take about 4 minutes on 2 idle CPU cores) and writes
`weights/checker.safetensors` (float16, about 190 KB) and `weights/checker.json` (its settings and
held-out accuracy); `load_checker()` reads them, so `datacrafter run` and the quickstart start at
once instead of training first. The shipped weights were trained with the 600 x 128 default in
241 s on 2 idle CPU cores: digit 96.0% on held-out real renders, colours 100% (MODEL_CARD.md).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from .digits import BACKGROUNDS, CLASSES, FOREGROUNDS, colored_digits

HEADS: dict[str, list[str]] = {"digit": CLASSES, "foreground": list(FOREGROUNDS), "background": list(BACKGROUNDS)}
CHECKER_RENDER_SEED = 777  # differs from the generator's training renders (seed 0)
WEIGHTS = Path(__file__).with_name("weights") / "checker.safetensors"


class CheckerNet(nn.Module):
    """Three-head CNN: a shared conv trunk, one linear head per attribute."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.BatchNorm2d(64),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(64, 96, 3, padding=1),
            nn.BatchNorm2d(96),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(2),
            nn.Flatten(),
            nn.Dropout(0.2),
        )
        self.heads = nn.ModuleDict({k: nn.Linear(96 * 4, len(v)) for k, v in HEADS.items()})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.trunk(x)
        return {k: head(h) for k, head in self.heads.items()}


def to_tensor(images: list[Image.Image]) -> torch.Tensor:
    """PIL images -> float (n, 3, 32, 32) in [0, 1], resizing anything that is not 32x32."""
    arr = [
        np.asarray(
            im.convert("RGB").resize((32, 32), Image.Resampling.BILINEAR) if im.size != (32, 32) else im.convert("RGB"),
            dtype=np.float32,
        )
        for im in images
    ]
    return torch.from_numpy(np.stack(arr)).permute(0, 3, 1, 2) / 255.0


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Shift +-2 px, sometimes blur, add mild noise: so image quality alone does not decide the answer."""
    n = x.shape[0]
    padded = F.pad(x, (2, 2, 2, 2), mode="replicate")
    dx = torch.randint(0, 5, (n,), generator=gen)
    dy = torch.randint(0, 5, (n,), generator=gen)
    out = torch.stack([padded[i, :, dy[i] : dy[i] + 32, dx[i] : dx[i] + 32] for i in range(n)])
    blur = torch.rand(n, generator=gen) < 0.3
    if blur.any():
        k = torch.tensor([1.0, 2.0, 1.0])
        k = (k[:, None] * k[None, :]) / 16.0
        w = k.expand(3, 1, 3, 3).contiguous()
        out[blur] = F.conv2d(F.pad(out[blur], (1, 1, 1, 1), mode="replicate"), w, groups=3)
    out = out + 0.03 * torch.randn(out.shape, generator=gen)
    return out.clamp(0, 1)


@dataclass
class Checker:
    """A trained checker plus its accuracy on real held-out renders."""

    net: CheckerNet
    heldout_accuracy: dict[str, float] = field(default_factory=dict)
    train_seconds: float = 0.0
    settings: dict[str, int] = field(default_factory=dict)

    @torch.no_grad()
    def predict(self, images: list[Image.Image]) -> dict[str, list[str]]:
        """Predicted digit / foreground / background names for each image."""
        self.net.eval()
        x = to_tensor(images)
        out: dict[str, list[str]] = {k: [] for k in HEADS}
        for i in range(0, len(x), 256):
            logits = self.net(x[i : i + 256])
            for k, names in HEADS.items():
                out[k] += [names[j] for j in logits[k].argmax(1).tolist()]
        return out


def _frame_tensors(frame) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    x = to_tensor(list(frame["image"]))
    cols = {"digit": "digit", "foreground": "foreground", "background": "background"}
    y = {k: torch.tensor([HEADS[k].index(v) for v in frame[c]]) for k, c in cols.items()}
    return x, y


def train_checker(
    steps: int = 600,
    batch: int = 128,
    variants: int = 3,
    seed: int = 0,
    threads: int = 2,
    verbose: bool = False,
    progress: bool = False,
) -> Checker:
    """Train the checker on real pool renders; evaluate on renders of held-out pool scans.

    progress=True shows a tqdm bar (training takes minutes on a busy CPU).
    """
    from .train import heldout_sources

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    t0 = time.time()
    pool = colored_digits(shots=1, seed=CHECKER_RENDER_SEED, pool_variants=variants).pool
    assert pool is not None  # colored_digits always makes a pool split
    frame = pool.frame
    held = frame["source_index"].isin(heldout_sources(frame["source_index"].to_numpy())).to_numpy()
    x_tr, y_tr = _frame_tensors(frame[~held])
    x_te, y_te = _frame_tensors(frame[held])
    net = CheckerNet()
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    gen = torch.Generator().manual_seed(seed)
    net.train()
    from tqdm.auto import tqdm

    bar = tqdm(total=steps, desc="training the independent checker", unit="step", disable=not progress)
    for step in range(steps):
        idx = torch.randint(0, len(x_tr), (batch,), generator=gen)
        logits = net(_augment(x_tr[idx], gen))
        loss = sum((F.cross_entropy(logits[k], y_tr[k][idx]) for k in HEADS), torch.zeros(()))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        bar.update(1)
        if verbose and step % 100 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    net.eval()
    with torch.no_grad():
        logits = net(x_te)
    acc = {k: float((logits[k].argmax(1) == y_te[k]).float().mean()) for k in HEADS}
    return Checker(
        net=net,
        heldout_accuracy=acc,
        train_seconds=time.time() - t0,
        settings={"steps": steps, "batch": batch, "variants": variants, "seed": seed},
    )


def save_checker(checker: Checker, path: str | Path = WEIGHTS) -> Path:
    """Write the weights as float16 safetensors (small enough to ship) and a json card beside them."""
    from safetensors.torch import save as to_bytes

    from ..data.files import atomic_write_bytes

    path = Path(path)
    state = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in checker.net.state_dict().items()}
    atomic_write_bytes(path, to_bytes(state))
    card = {
        "heldout_accuracy": checker.heldout_accuracy,
        "train_seconds": round(checker.train_seconds, 1),
        "settings": checker.settings,
        "render_seed": CHECKER_RENDER_SEED,
        "dtype": "float16",
        "trained_by": "python -m datacrafter_widget.starter.checker",
    }
    atomic_write_bytes(path.with_suffix(".json"), (json.dumps(card, indent=1) + "\n").encode("utf-8"))
    return path


def load_checker(path: str | Path = WEIGHTS) -> Checker:
    """The shipped checker (no training); the error names the command that builds the weights."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"no checker weights at {path}: build them with `python -m datacrafter_widget.starter.checker`"
        )
    net = CheckerNet()
    net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in load_file(str(path)).items()})
    card_path = path.with_suffix(".json")
    card = json.loads(card_path.read_text(encoding="utf-8")) if card_path.is_file() else {}
    return Checker(
        net=net.eval(),
        heldout_accuracy=card.get("heldout_accuracy", {}),
        train_seconds=float(card.get("train_seconds", 0.0)),
        settings=card.get("settings", {}),
    )


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Train the independent checker and write starter/weights/checker.*")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    a = parser.parse_args()
    c = train_checker(steps=a.steps, batch=a.batch, threads=a.threads, verbose=True, progress=True)
    print("held-out real renders:", c.heldout_accuracy, f"({c.train_seconds:.0f}s)")
    print("wrote", save_checker(c))
