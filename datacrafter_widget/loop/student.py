"""The student: the downstream classifier that generated data is meant to improve.

It is trained on the real training images plus the generated images the person accepted, and
evaluated on a held-out split; GAP backpropagates through it, so its forward pass on a pixel
tensor is differentiable. Defaults follow the data: a small CNN for small images (the 32x32
starter kit), a linear probe on CLIP features for real photos, or a torchvision classifier the
user names ("resnet18", "resnet50", ...) trained from scratch or from a local weights file, or a
module the user passes in (train_student's docstring says which options need a download: only
pretrained=True). Stored as safetensors + json, never pickle.

The small CNN is the product's yardstick, so it must learn digit *shape* from few images: four
conv blocks that keep a 2x2 spatial map before the head (three convs + global pooling could not:
chance with 5 shots per class), dropout, AdamW with a one-cycle schedule, and a fixed number of
optimiser steps whatever the training-set size (so adding images never shrinks the training).
Only shift augmentation: colour changes would hide the spurious cues the product studies.
Figures: benchmarks/bench_student.py.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict, overload

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from .. import compute
from ..data.images import to_rgb

if TYPE_CHECKING:
    from ..data.dataset import Dataset
    from ..models.embedder import Embedder

__all__ = [
    "Student",
    "StudentConfig",
    "StudentError",
    "accepted_rows",
    "default_kind",
    "evaluate",
    "pixels",
    "train_student",
    "training_set_from_samples",
    "LazyImages",
]

_GLOBAL_RNG_LOCK = threading.Lock()  # see train_student: one training at a time on the global RNG
WEIGHTS_FILE = "student.safetensors"
CONFIG_FILE = "student.json"
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class StudentError(ValueError):
    """Bad student input; the message names the thing and the fix."""


@dataclass
class StudentConfig:
    """Everything needed to rebuild a student's architecture (saved as student.json)."""

    kind: str  # "cnn" | "probe" | "backbone"
    classes: list[str]
    image_size: int = 32
    width: int = 16  # CNN channels of the first block
    epochs: int = 40  # probe / backbone; the CNN counts optimiser steps instead
    lr: float = 5e-3
    weight_decay: float = 1e-4
    batch_size: int = 32
    arch: str = "cnn4"  # "cnn4": 4 conv blocks + 2x2 map; "cnn3": the old 3 convs + global pooling (read-only)
    steps: int = 0  # optimiser steps in total (0: epochs x batches per epoch)
    dropout: float = 0.0
    label_smoothing: float = 0.0
    trained_steps: int = 0
    seed: int = 0
    augment: bool = True  # small random translations (never colour changes: they would hide spurious cues)
    embedder: str = ""  # probe: the embedder's name (features must come from the same model)
    feature_dim: int = 0
    backbone: str = ""  # "resnet18" (torchvision) | "torchvision:resnet18" | "timm:resnet18" | "custom"
    weights: str = ""  # backbone: the local weights file it started from ("" = from scratch)
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.25, 0.25, 0.25)
    trained_epochs: int = 0
    n_train: int = 0
    cancelled: bool = False
    history: list[float] = field(default_factory=list)  # mean training loss per epoch


# The default small CNN's training recipe (tuned on the starter digits; benchmarks/bench_student.py).
CNN_WIDTH = 16
CNN_STEPS = 500
CNN_BATCH = 64
CNN_LR = 4e-3
CNN_WEIGHT_DECAY = 5e-2
CNN_DROPOUT = 0.2
CNN_LABEL_SMOOTHING = 0.0
#: train the CNN in channels-last layout (False: the plain NCHW layout, for comparison in benchmarks)
CNN_CHANNELS_LAST = True


class _SeededDropout(nn.Dropout):
    """nn.Dropout that draws its masks from `generator` when one is set (the same draws, in the same
    order, as nn.Dropout on a global RNG seeded alike): a training never reads torch's process-wide
    RNG, which any other thread may draw from meanwhile (building a model, say)."""

    generator: torch.Generator | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0 or self.generator is None:
            return super().forward(x)
        noise = torch.empty_like(x).bernoulli_(1 - self.p, generator=self.generator)
        noise.div_(1 - self.p)
        return x * noise


def _seed_small_cnn(net: nn.Module, generator: torch.Generator) -> None:
    """Redo the default initialisation of every conv / linear layer from `generator`, in construction
    order (what a global RNG seeded alike gives), and let dropout draw from it too."""
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            with torch.no_grad():
                nn.init.kaiming_uniform_(m.weight, a=math.sqrt(5), generator=generator)
                if m.bias is not None:
                    fan_in, _ = nn.init._calculate_fan_in_and_fan_out(m.weight)
                    bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0.0
                    nn.init.uniform_(m.bias, -bound, bound, generator=generator)
        elif isinstance(m, _SeededDropout):
            m.generator = generator


def _small_cnn(k: int, width: int, dropout: float = CNN_DROPOUT) -> nn.Module:
    """Four conv blocks down to a 2x2 map (32 px input), then dropout + a linear head.

    Keeping the 2x2 layout (where the strokes are) is what lets it learn digit shape from tens of
    images; global pooling right after three convs (an ~18 px receptive field) could not.
    """
    w = width

    def block(i: int, o: int) -> list[nn.Module]:
        return [nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU(), nn.MaxPool2d(2)]

    return nn.Sequential(
        *block(3, w),
        *block(w, 2 * w),
        *block(2 * w, 4 * w),
        *block(4 * w, 4 * w),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        _SeededDropout(dropout),
        nn.Linear(16 * w, k),
    )


def _small_cnn_v1(k: int, width: int) -> nn.Module:
    """The first student (three conv blocks + global pooling): kept so projects that saved one still load."""
    w = width
    return nn.Sequential(
        nn.Conv2d(3, w, 3, padding=1),
        nn.BatchNorm2d(w),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(w, 2 * w, 3, padding=1),
        nn.BatchNorm2d(2 * w),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(2 * w, 4 * w, 3, padding=1),
        nn.BatchNorm2d(4 * w),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4 * w, k),
    )


def _backbone_spec(spec: str) -> tuple[str, str]:
    """ "resnet18" / "torchvision:resnet18" -> ("torchvision", "resnet18"); "timm:<name>" -> ("timm", name)."""
    lib, sep, name = str(spec).partition(":")
    if not sep:
        lib, name = "torchvision", lib
    if lib not in ("torchvision", "timm") or not name:
        raise StudentError(
            f"backbone {spec!r} is not understood: use a torchvision model name such as 'resnet18', "
            "'timm:<name>', or pass an nn.Module"
        )
    return lib, name


def _load_weights_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A state dict from a local .safetensors file, or a torch state-dict file (.pt/.pth/.bin, tensors only)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise StudentError(
            f"weights file {str(path)!r} does not exist: pass the path of a local .safetensors or "
            ".pth state dict of the same architecture"
        )
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)  # tensors only, no arbitrary objects
    except Exception as err:  # noqa: BLE001 - any unreadable file gets the same clear message
        raise StudentError(
            f"cannot read weights file {str(path)!r} as a state dict ({err}); "
            "save it with torch.save(model.state_dict(), path) or as .safetensors"
        ) from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise StudentError(f"weights file {str(path)!r} is not a state dict of tensors; save model.state_dict()")
    return state


def _replace_head(net: nn.Module, k: int, name: str) -> nn.Module:
    for attr in ("fc", "head", "heads", "classifier"):
        old = getattr(net, attr, None)
        if isinstance(old, nn.Linear):
            setattr(net, attr, nn.Linear(old.in_features, k))
            return net
        if isinstance(old, nn.Sequential) and isinstance(old[-1], nn.Linear):
            old[-1] = nn.Linear(old[-1].in_features, k)
            return net
    raise StudentError(f"cannot find the classification head of model {name!r}: pass the model itself as backbone=")


def _named_backbone(spec: str, k: int, pretrained: bool = False, weights: str | os.PathLike | None = None) -> nn.Module:
    """A torchvision (or timm) classifier by name with a k-class head.

    weights: a local state dict of the full model (its original head is fine: it is replaced after
    loading). pretrained=True asks the library for its published weights, which downloads them.
    """
    lib, name = _backbone_spec(spec)
    if lib == "timm":
        try:
            import timm
        except ImportError:
            raise StudentError(
                "backbone 'timm:...' needs the timm package: pip install timm, "
                "or use a torchvision model name such as 'resnet18'"
            ) from None
        if name not in timm.list_models():
            raise StudentError(f"timm has no model {name!r}: see timm.list_models()")
        net = timm.create_model(name, pretrained=pretrained and weights is None)
    else:
        import torchvision

        known = torchvision.models.list_models(module=torchvision.models)
        if name not in known:
            import difflib

            close = difflib.get_close_matches(name, known, n=3)
            raise StudentError(
                f"torchvision has no classifier {name!r}"
                + (f" (did you mean {', '.join(map(repr, close))}?)" if close else "")
                + ": see torchvision.models.list_models(module=torchvision.models)"
            )
        try:
            net = torchvision.models.get_model(name, weights="DEFAULT" if pretrained and weights is None else None)
        except OSError as err:  # pretrained=True offline: the download failed
            raise StudentError(
                f"cannot download torchvision's weights for {name!r} ({err}); train from scratch "
                "(pretrained=False) or pass a local file: weights='resnet18.safetensors'"
            ) from None
    if weights is not None:
        state = _load_weights_file(weights)
        try:
            net.load_state_dict(state)
        except RuntimeError as err:
            raise StudentError(
                f"weights {str(weights)!r} do not fit {lib} model {name!r}: {str(err).splitlines()[0]} "
                "- pass weights saved from the same architecture"
            ) from None
    if lib == "timm":
        net.reset_classifier(k)  # type: ignore[operator]  # timm models have it; nn.Module's stub does not
        return net
    return _replace_head(net, k, name)


class _HeadOn(nn.Module):
    """A user's feature extractor with a fresh linear head (output size found by one dummy pass)."""

    def __init__(self, body: nn.Module, k: int, image_size: int) -> None:
        super().__init__()
        self.body = body
        with torch.no_grad():
            was = body.training
            body.eval()
            out = body(torch.zeros(1, 3, image_size, image_size))
            body.train(was)
        self.head = nn.Linear(int(out.flatten(1).shape[1]), k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x).flatten(1))


def pixels(images: Sequence[Image.Image], size: int) -> torch.Tensor:
    """PIL images -> float tensor (n, 3, size, size) in [0, 1]."""
    arrays = []
    for im in images:
        im = to_rgb(im)
        if im.size != (size, size):
            im = im.resize((size, size), Image.Resampling.BICUBIC)
        arrays.append(np.asarray(im, dtype=np.float32) / 255.0)
    if not arrays:
        return torch.zeros(0, 3, size, size)
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


class Student:
    """A trained classifier: `predict`, `predict_proba`, differentiable `logits_from_pixels`, save/load."""

    def __init__(self, config: StudentConfig, net: nn.Module, embedder: Embedder | None = None) -> None:
        self.config = config
        self.net = net
        self.embedder = embedder
        self.net.eval()

    @property
    def classes(self) -> list[str]:
        return list(self.config.classes)

    def __repr__(self) -> str:
        c = self.config
        done = f"{c.trained_steps} steps" if c.kind == "cnn" and c.trained_steps else f"{c.trained_epochs} epochs"
        return f"Student({c.kind}, {len(c.classes)} classes, trained {done} on {c.n_train} images{' (cancelled)' if c.cancelled else ''})"

    def class_index(self, label: str) -> int:
        """Index of a class; a clear error when the student never saw it."""
        try:
            return self.config.classes.index(str(label))
        except ValueError:
            raise StudentError(
                f"class {label!r} is unknown to the student (it knows {self.config.classes}); "
                "retrain it with crafter.train_student() on data that has this class"
            ) from None

    # ---- forward passes ----------------------------------------------------------------------
    def _probe_embedder(self) -> Embedder:
        if self.embedder is None:
            raise StudentError(
                "this is a CLIP linear-probe student and needs its embedder: load it with Student.load(path, embedder=models.embedder)"
            )
        return self.embedder

    def _features_from_pixels(self, x: torch.Tensor) -> torch.Tensor:
        """CLIP image features for the probe, differentiable through the embedder's visual tower."""
        model = self._probe_embedder().model
        size = int(getattr(self.embedder, "image_size", 224))
        visual = getattr(model, "visual", None)
        mean = getattr(visual, "image_mean", None) or _CLIP_MEAN
        std = getattr(visual, "image_std", None) or _CLIP_STD
        x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)
        x = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
        param = next(model.parameters())
        f = model.encode_image(x.to(param.device, param.dtype)).float().cpu()
        return F.normalize(f, dim=-1)

    def logits_from_pixels(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a pixel tensor (n, 3, H, W) in [0, 1]; differentiable (GAP backpropagates through it)."""
        c = self.config
        if c.kind == "probe":
            return self.net(self._features_from_pixels(x))
        if x.shape[-1] != c.image_size or x.shape[-2] != c.image_size:
            x = F.interpolate(
                x, size=(c.image_size, c.image_size), mode="bilinear", align_corners=False, antialias=True
            )
        mean = torch.tensor(c.mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(c.std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        return self.net((x - mean) / std)

    @torch.no_grad()
    def logits(self, images: Sequence[Image.Image], batch_size: int = 256) -> torch.Tensor:
        self.net.eval()
        if self.config.kind == "probe":
            feats = (
                torch.from_numpy(np.asarray(self._probe_embedder().embed_images(list(images)), dtype=np.float32))
                if len(images)
                else torch.zeros(0, self.config.feature_dim)
            )
            return self.net(feats)
        out = [
            self.logits_from_pixels(pixels(images[i : i + batch_size], self.config.image_size))
            for i in range(0, len(images), batch_size)
        ]
        return torch.cat(out) if out else torch.zeros(0, len(self.config.classes))

    def predict_proba(self, images: Sequence[Image.Image]) -> np.ndarray:
        return torch.softmax(self.logits(images), dim=-1).numpy()

    def predict(self, images: Sequence[Image.Image]) -> list[str]:
        idx = self.logits(images).argmax(dim=-1).tolist()
        return [self.config.classes[i] for i in idx]

    # ---- persistence -------------------------------------------------------------------------
    def save(self, folder: str | os.PathLike) -> Path:
        """Write student.safetensors + student.json into `folder` (atomically, no pickle)."""
        from safetensors.torch import save as to_safetensors_bytes

        from ..data.files import atomic_write_bytes

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(
            folder / WEIGHTS_FILE,
            to_safetensors_bytes({k: v.detach().contiguous().cpu() for k, v in self.net.state_dict().items()}),
        )
        atomic_write_bytes(folder / CONFIG_FILE, json.dumps(asdict(self.config), indent=1).encode("utf-8"))
        return folder

    @classmethod
    def load(
        cls, folder: str | os.PathLike, *, embedder: Embedder | None = None, backbone: nn.Module | None = None
    ) -> Student:
        """Rebuild from `save`; a probe needs the same embedder, a custom backbone its module."""
        from safetensors.torch import load_file

        folder = Path(folder)
        if not (folder / CONFIG_FILE).exists():
            raise StudentError(
                f"no saved student in {folder} (expected {CONFIG_FILE}); train one with crafter.train_student()"
            )
        raw = json.loads((folder / CONFIG_FILE).read_text())
        raw["mean"], raw["std"] = tuple(raw["mean"]), tuple(raw["std"])
        if raw.get("kind") == "cnn" and "arch" not in raw:
            raw["arch"] = "cnn3"  # saved before the 4-block CNN existed
        known = {f.name for f in fields(StudentConfig)}
        config = StudentConfig(**{k: v for k, v in raw.items() if k in known})
        if (
            config.kind == "probe"
            and embedder is not None
            and getattr(embedder, "name", config.embedder) != config.embedder
        ):
            raise StudentError(
                f"this probe was trained on features of {config.embedder!r}, not {embedder.name!r}: pass that embedder"
            )
        net = _build_net(config, backbone)
        net.load_state_dict(load_file(str(folder / WEIGHTS_FILE)))
        return cls(config, net, embedder)


def _build_net(
    config: StudentConfig,
    backbone: nn.Module | None = None,
    pretrained: bool = False,
    weights: str | os.PathLike | None = None,
) -> nn.Module:
    k = len(config.classes)
    if config.kind == "cnn":
        if config.arch == "cnn3":
            return _small_cnn_v1(k, config.width)
        return _small_cnn(k, config.width, config.dropout)
    if config.kind == "probe":
        return nn.Linear(config.feature_dim, k)
    if config.kind == "backbone":
        if config.backbone == "custom":
            if backbone is None:
                raise StudentError("this student fine-tuned a custom backbone: pass the same module as backbone=")
            return _HeadOn(backbone, k, config.image_size)
        return _named_backbone(config.backbone, k, pretrained, weights)
    raise StudentError(f"student kind {config.kind!r} is not one of 'cnn', 'probe', 'backbone'")


def default_kind(images: Sequence[Image.Image], embedder: Embedder | None = None) -> str:
    """Small images (<= 64 px, like the starter kit) -> CNN; larger ones -> CLIP probe when an embedder exists."""
    side = max(max(im.size) for im in images[:64])
    return "cnn" if side <= 64 or embedder is None else "probe"


def _shift(x: torch.Tensor, gen: torch.Generator, pad: int) -> torch.Tensor:
    """Random translation by up to `pad` pixels (edge padding keeps the background colour)."""
    n, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad), mode="replicate")
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    rows = (dy[:, None] + torch.arange(h))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w))[:, None, None, :]
    return padded[torch.arange(n)[:, None, None, None], torch.arange(c)[None, :, None, None], rows, cols]


def train_student(
    images: Sequence[Image.Image],
    labels: Sequence[str],
    classes: Sequence[str] | None = None,
    *,
    kind: str = "auto",
    embedder: Embedder | None = None,
    backbone: str | nn.Module | None = None,
    pretrained: bool = False,
    weights: str | os.PathLike | None = None,
    epochs: int | None = None,
    steps: int | None = None,
    lr: float | None = None,
    batch_size: int | None = None,
    image_size: int | None = None,
    width: int | None = None,
    weight_decay: float | None = None,
    dropout: float | None = None,
    label_smoothing: float | None = None,
    seed: int = 0,
    augment: bool = True,
    progress: bool | Callable[[int, int], None] = True,
    should_stop: Callable[[], bool] | None = None,
    features: np.ndarray | Callable[[], np.ndarray] | None = None,
) -> Student:
    """Train a student from scratch on `images`/`labels`; deterministic for a given seed.

    features: the embedder's features of `images` (an array, or a function that returns it), which
    a probe trains on instead of embedding the images again: the controller passes the project's
    cached embeddings, and `images` may then be a sequence that reads each image only when indexed.

    The small CNN (kind="cnn", the default for images <= 64 px) trains for a fixed `steps`
    optimiser steps (default CNN_STEPS) whatever the number of images; `epochs=` instead gives
    epochs x batches-per-epoch steps. Probe and backbone students train for `epochs`.
    progress: True for a tqdm bar, False for none, or a callable(done, total) (epochs, or chunks
    of steps for the CNN's step budget); a chunk that takes longer than compute.HEARTBEAT_S seconds (a busy
    CPU) reports its count again meanwhile, so a long training never looks like a hang.
    Threads: the compute policy's student threads (datacrafter_widget.compute).
    should_stop: a callable returning True to stop (the controller passes its cancel check); the
    training done is kept.

    Students, and which run without a download:
      kind="cnn"                        the small CNN, from scratch (offline)
      kind="probe", embedder=...        linear probe on the embedder's CLIP features (offline once
                                        the embedder is loaded; a secondary student for photos)
      backbone="resnet18"               any torchvision classifier by name (torchvision:<name> too),
                                        from scratch (offline)
      backbone="resnet50", weights="resnet50.safetensors"
                                        the same, starting from a local state dict (.safetensors or
                                        a torch .pth of tensors; its head is replaced) (offline)
      backbone="resnet18", pretrained=True
                                        torchvision's published weights: downloads them
      backbone="timm:<name>"            a timm model (needs timm; pretrained=True downloads)
      backbone=nn.Module                your own feature extractor with a new linear head (offline)
    """
    if len(images) == 0:
        raise StudentError(
            "no training images: the student needs the real train split and/or accepted generated images"
        )
    if len(images) != len(labels):
        raise StudentError(f"{len(images)} images but {len(labels)} labels: pass one label per image")
    labels = [str(l) for l in labels]
    classes = sorted(set(labels)) if classes is None else [str(c) for c in classes]
    unknown = sorted(set(labels) - set(classes))
    if unknown:
        raise StudentError(f"labels {unknown} are not among the classes {classes}: add them to classes=")
    if backbone is not None:
        kind = "backbone"
    if kind == "auto":
        kind = default_kind(images, embedder)
    if kind == "probe" and embedder is None:
        raise StudentError("a CLIP linear-probe student needs an embedder: pass embedder=models.embedder or kind='cnn'")
    if kind == "backbone" and backbone is None:
        raise StudentError(
            "kind='backbone' needs backbone='resnet18' (any torchvision classifier name), 'timm:<name>' or an nn.Module"
        )
    if weights is not None and not isinstance(backbone, str):
        raise StudentError(
            "weights= loads a local state dict into a named backbone: pass backbone='resnet18' (or the "
            "torchvision name the weights were saved from) too"
        )
    if kind not in ("cnn", "probe", "backbone"):
        raise StudentError(f"student kind {kind!r} is not one of 'auto', 'cnn', 'probe', 'backbone'")
    for name, value in (("epochs", epochs), ("steps", steps), ("batch_size", batch_size), ("width", width)):
        if value is not None and int(value) < 1:
            raise StudentError(f"{name}={value} must be at least 1")

    y = torch.tensor([classes.index(l) for l in labels])
    n = len(y)
    config = StudentConfig(kind=kind, classes=classes, seed=int(seed), augment=augment, n_train=n)
    if kind == "cnn":
        config.image_size = int(image_size or 32)
        config.width = int(width or CNN_WIDTH)
        config.batch_size = int(batch_size or CNN_BATCH)
        config.lr = float(lr or CNN_LR)
        config.weight_decay = float(CNN_WEIGHT_DECAY if weight_decay is None else weight_decay)
        config.dropout = float(CNN_DROPOUT if dropout is None else dropout)
        config.label_smoothing = float(CNN_LABEL_SMOOTHING if label_smoothing is None else label_smoothing)
    elif kind == "probe":
        config.epochs = int(epochs or 300)
        config.lr = float(lr or 1e-2)
        config.embedder = str(getattr(embedder, "name", "embedder"))
        config.augment = False
    else:
        config.image_size = int(image_size or 224)
        config.epochs = int(epochs or 10)
        config.lr = float(lr or 1e-4)
        config.mean, config.std = _IMAGENET_MEAN, _IMAGENET_STD
        config.backbone = backbone if isinstance(backbone, str) else "custom"
        config.weights = str(weights) if weights is not None else ("library default" if pretrained else "")
    if kind != "cnn":
        config.batch_size = int(batch_size or 32)
        config.weight_decay = float(1e-4 if weight_decay is None else weight_decay)
        config.label_smoothing = float(label_smoothing or 0.0)
    # The probe trains full-batch (features are tiny); images train in mini-batches.
    bs = n if kind == "probe" else max(1, min(config.batch_size, n))
    per_epoch = math.ceil(n / bs)
    if steps is not None:
        config.steps = int(steps)
    elif kind == "cnn" and epochs is None:
        config.steps = CNN_STEPS  # a fixed budget: more images never mean less training
    else:
        config.epochs = int(epochs or config.epochs)
        config.steps = config.epochs * per_epoch
    # Progress / cancel / loss history come per epoch, or per chunk of ~25 steps for a step budget.
    chunk = per_epoch if (epochs is not None or kind != "cnn") and steps is None else max(1, min(25, config.steps))
    chunks = math.ceil(config.steps / chunk)

    # Weight init and dropout draw on torch's global RNG, which fork_rng does not isolate between threads: a
    # held-out student training in a background job would interleave with this one, so trainings take turns.
    # The small CNN (the default) goes further and draws from its own generator, seeded as the global one
    # was: the same numbers, and no other thread's draws in between (benchmarks/results/NOTES.md).
    with _GLOBAL_RNG_LOCK, torch.random.fork_rng(devices=[]), compute.step("student"):
        torch.manual_seed(int(seed))
        gen = torch.Generator().manual_seed(int(seed))
        if kind == "probe":
            assert embedder is not None  # checked above: a probe needs one
            given = features() if callable(features) else features
            found = embedder.embed_images(list(images)) if given is None else given
            x = torch.from_numpy(np.asarray(found, dtype=np.float32))
            if x.shape[0] != n:
                raise StudentError(f"{x.shape[0]} feature rows for {n} images: pass one row of features per image")
            config.feature_dim = int(x.shape[1])
        else:
            x = pixels(images, config.image_size)
        net = _build_net(config, backbone if isinstance(backbone, nn.Module) else None, pretrained, weights)
        if any(isinstance(m, _SeededDropout) for m in net.modules()):
            _seed_small_cnn(net, torch.Generator().manual_seed(int(seed)))
        student = Student(config, net, embedder)
        # Channels-last for the CNN: oneDNN's convolutions and max pooling take the NHWC path, which
        # runs its steps ~1.7x faster on one CPU thread (benchmarks/bench_student.py prints both).
        layout = torch.channels_last if kind == "cnn" and CNN_CHANNELS_LAST else torch.contiguous_format
        net.to(memory_format=layout)
        opt = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.lr, total_steps=config.steps)
        mean = torch.tensor(config.mean).view(1, 3, 1, 1)
        std = torch.tensor(config.std).view(1, 3, 1, 1)
        bar = None
        if progress is True:
            from tqdm.auto import tqdm

            bar = tqdm(
                total=chunks,
                desc=f"training {kind} student",
                unit="epoch" if chunk == per_epoch else f"{chunk} steps",
                leave=False,
            )
        net.train()
        order, pos = torch.randperm(n, generator=gen), 0
        last_tick = time.monotonic()
        for c in range(chunks):
            if should_stop is not None and should_stop():
                config.cancelled = True
                break
            total, seen = 0.0, 0
            for _ in range(min(chunk, config.steps - config.trained_steps)):
                if time.monotonic() - last_tick >= compute.HEARTBEAT_S:  # a slow chunk (a busy CPU) still ticks
                    last_tick = time.monotonic()
                    if bar is not None:
                        bar.set_postfix(step=f"{config.trained_steps}/{config.steps}")
                    elif callable(progress):
                        progress(c, chunks)
                if pos >= n:
                    order, pos = torch.randperm(n, generator=gen), 0
                idx = order[pos : pos + bs]
                pos += bs
                xb = x[idx]
                if kind == "probe":
                    logits = net(xb)
                else:
                    if config.augment:
                        xb = _shift(xb, gen, max(1, config.image_size // 16))
                    logits = net(((xb - mean) / std).contiguous(memory_format=layout))
                loss = F.cross_entropy(logits, y[idx], label_smoothing=config.label_smoothing)
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
                config.trained_steps += 1
                total += float(loss.detach()) * len(idx)
                seen += len(idx)
            config.history.append(total / max(1, seen))
            config.trained_epochs = config.trained_steps // per_epoch
            last_tick = time.monotonic()
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{config.history[-1]:.3f}")
            elif callable(progress):
                progress(c + 1, chunks)
        if bar is not None:
            bar.close()
        net.to(memory_format=torch.contiguous_format)
        net.eval()
    return student


class Evaluation(TypedDict):
    """What `evaluate` returns."""

    accuracy: float
    n: int
    per_class: pd.DataFrame  # class, n, correct, accuracy
    confusion: pd.DataFrame  # true x predicted counts
    predictions: list[str]


def evaluate(student: Student, dataset: Dataset | tuple[Sequence[Image.Image], Sequence[str]] | None) -> Evaluation:
    """Accuracy, per-class accuracy and confusion matrix of `student` on a Dataset (or (images, labels))."""
    if student is None:
        raise StudentError("no student yet: train one first with crafter.train_student()")
    if isinstance(dataset, tuple):
        images, labels = list(dataset[0]), [str(l) for l in dataset[1]]
    else:
        if dataset is None:
            raise StudentError("no evaluation dataset: pass a Dataset such as ds.test")
        images, labels = dataset.images(), [str(l) for l in dataset.labels]
    if not labels:
        raise StudentError("the evaluation dataset is empty: pass a split with images, e.g. ds.test")
    unknown = sorted(set(labels) - set(student.classes))
    if unknown:
        raise StudentError(
            f"the evaluation data has class(es) {unknown} unknown to the student (it knows {student.classes}); "
            "evaluate on the same classes or retrain the student on data that has them"
        )
    pred = student.predict(images)
    classes = student.classes
    confusion = pd.DataFrame(0, index=pd.Index(classes, name="true"), columns=pd.Index(classes, name="predicted"))
    for t, p in zip(labels, pred):
        confusion.at[t, p] += 1
    rows = []
    for c in classes:
        n = int(confusion.loc[c].sum())
        correct = int(confusion.at[c, c])
        rows.append({"class": c, "n": n, "correct": correct, "accuracy": correct / n if n else float("nan")})
    per_class = pd.DataFrame(rows)
    accuracy = float(np.mean([t == p for t, p in zip(labels, pred)]))
    return {"accuracy": accuracy, "n": len(labels), "per_class": per_class, "confusion": confusion, "predictions": pred}


# ---- choosing the training data from the sample store -----------------------------------------
def accepted_rows(samples: pd.DataFrame, *, keep_flagged: bool = False) -> pd.DataFrame:
    """Generated rows the person accepted: feedback not bad/removed, and no automatic flag unless kept."""
    gen = samples[samples["source"] == "generated"]
    fb = gen["feedback"].fillna("").astype(str)
    mask = ~fb.isin(["bad", "removed"])
    if not keep_flagged and "flag" in gen.columns:
        mask &= gen["flag"].fillna("").astype(str).eq("") | fb.eq("good")
    return gen[mask]


class LazyImages(Sequence[Image.Image]):
    """The images of `ids`, each read by `load` when indexed, so a training set of photos is never
    in memory at once (a probe on cached features reads a handful; the CNN shrinks them one by one)."""

    def __init__(self, load: Callable[[str], Image.Image], ids: Sequence[str]) -> None:
        self.load = load
        self.ids = [str(i) for i in ids]

    def __len__(self) -> int:
        return len(self.ids)

    @overload
    def __getitem__(self, index: int) -> Image.Image: ...

    @overload
    def __getitem__(self, index: slice) -> list[Image.Image]: ...

    def __getitem__(self, index: int | slice) -> Image.Image | list[Image.Image]:
        if isinstance(index, slice):
            return [self.load(i) for i in self.ids[index]]
        return self.load(self.ids[index])


def training_set_from_samples(
    samples: pd.DataFrame,
    load_image: Callable[[str], Image.Image],
    *,
    real_split: str = "train",
    keep_flagged: bool = False,
    include_generated: bool = True,
) -> tuple[LazyImages, list[str], list[str]]:
    """(images, labels, ids): the real `real_split` rows plus accepted generated ones (images read when used)."""
    real = samples[(samples["source"] == "real") & (samples["split"] == real_split)]
    rows = [real]
    if include_generated:
        rows.append(accepted_rows(samples, keep_flagged=keep_flagged))
    chosen = pd.concat(rows)
    ids = chosen["id"].astype(str).tolist()
    return LazyImages(load_image, ids), chosen["label"].astype(str).tolist(), ids
