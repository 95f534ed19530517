"""Where a process's resident memory goes, stage by stage: which module was running when it peaked.

Forward pre-hooks on named modules set the current stage; a thread samples /proc/self/status
every 10 ms (RSS, and its anonymous and file-backed parts: mapped safetensors weights are file
pages, activations are anonymous) and keeps each stage's peak. While `torch.autograd.backward`
runs, stages are prefixed "backward:" (a checkpointed block recomputing its forward shows up as
"backward:<block>"), and after it "after backward:", so the forward, the recomputation, the
gradients and what follows (a GAP step's final images) can be told apart.

    with StageMemory({"unet": pipe.unet, "vae.decoder": pipe.vae.decoder}) as stages:
        ...
    stages.report()
"""

from __future__ import annotations

import threading
import time
from typing import Any

import torch

GB = 1024**3


def status_bytes() -> tuple[int, int, int]:
    """(VmRSS, RssAnon, RssFile) of this process in bytes."""
    got = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile"):
                got[key] = int(rest.split()[0]) * 1024
    return got["VmRSS"], got["RssAnon"], got["RssFile"]


class StageMemory:
    """Per-stage peak resident memory; stages are entered by the forward of the given modules."""

    def __init__(self, modules: dict[str, Any], interval: float = 0.01) -> None:
        self.modules = modules
        self.interval = interval
        self.stage = "start"
        self.phase = ""
        self.peaks: dict[str, tuple[int, int, int]] = {}
        self.order: list[str] = []
        self.first_seen: dict[str, float] = {}
        self._stop = threading.Event()
        self._handles: list[Any] = []
        self._backward: Any = None
        self._t0 = 0.0

    def _enter(self, name: str) -> Any:
        def hook(module: Any, args: Any) -> None:
            self.stage = name

        return hook

    def _label(self) -> str:
        return f"{self.phase}{self.stage}"

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self._record()

    def _record(self) -> None:
        label = self._label()
        now = status_bytes()
        if label not in self.peaks:
            self.order.append(label)
            self.first_seen[label] = time.perf_counter() - self._t0
            self.peaks[label] = now
        elif now[0] > self.peaks[label][0]:
            self.peaks[label] = now

    def mark(self, name: str) -> None:
        """Enter a stage by hand (code that is not a module: the optimiser, the final images)."""
        self.stage = name
        self._record()

    def __enter__(self) -> "StageMemory":
        self._t0 = time.perf_counter()
        for name, module in self.modules.items():
            self._handles.append(module.register_forward_pre_hook(self._enter(name)))
        original = torch.autograd.backward

        def backward(*args: Any, **kwargs: Any) -> Any:
            self.phase = "backward:"
            try:
                return original(*args, **kwargs)
            finally:
                self._record()
                self.phase = "after backward:"  # what runs next (the final images) apart from the step's forward
                self.stage = ""

        self._backward = original
        torch.autograd.backward = backward  # type: ignore[assignment]
        threading.Thread(target=self._sample, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._record()
        torch.autograd.backward = self._backward
        for h in self._handles:
            h.remove()

    def report(self, base: tuple[int, int, int] | None = None) -> str:
        """One line per stage in the order first seen: its peak RSS (anonymous + file-backed)."""
        top = max(self.peaks.values(), key=lambda p: p[0])[0] if self.peaks else 0
        lines = [f"  {'stage':<42s} {'from':>7s} {'peak RSS':>9s} {'anon':>7s} {'file':>7s}"]
        for label in self.order:
            rss, anon, file = self.peaks[label]
            star = "  <- peak" if rss == top else ""
            lines.append(
                f"  {label:<42s} {self.first_seen[label]:6.1f}s {rss / GB:8.2f}G {anon / GB:6.2f}G {file / GB:6.2f}G{star}"
            )
        if base is not None:
            lines.append(
                f"  (before the span: RSS {base[0] / GB:.2f} G, anon {base[1] / GB:.2f} G, file {base[2] / GB:.2f} G)"
            )
        return "\n".join(lines)


def stage_modules(models: Any) -> dict[str, Any]:
    """The modules whose forward starts a stage of the profile: the text encoder, the UNet's blocks,
    the VAE decoder's resnets and upsamplers one by one, its output layers, CLIP's image tower, the captioner."""
    pipe = models.generator.pipe
    unet, dec = pipe.unet, pipe.vae.decoder
    out: dict[str, Any] = {"text encoder": pipe.text_encoder, "unet": unet}
    out.update({f"unet.down{i}": b for i, b in enumerate(unet.down_blocks)})
    out["unet.mid"] = unet.mid_block
    out.update({f"unet.up{i}": b for i, b in enumerate(unet.up_blocks)})
    out["unet.conv_out"] = unet.conv_out
    out["vae.post_quant_conv"] = pipe.vae.post_quant_conv
    out["vae.mid"] = dec.mid_block
    for i, block in enumerate(dec.up_blocks):
        out.update({f"vae.up{i}.resnet{j}": r.norm1 for j, r in enumerate(block.resnets)})  # GAP calls its parts
        out.update({f"vae.up{i}.upsampler": u for u in block.upsamplers or []})
    out["vae.conv_norm_out"] = dec.conv_norm_out
    out["vae.conv_out"] = dec.conv_out
    if models.embedder is not None:
        out["CLIP (student)"] = models.embedder.model.visual
    if models.captioner is not None:
        out["captioner"] = models.captioner.model
    return out
