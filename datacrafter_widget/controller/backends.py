"""Execution backends: where a round's images, and bulk captions and embeddings, are computed.

One protocol, `Backend`: `generate(models, requests)` -> finished `GeneratedBatch`es,
`embed_images` / `caption_images` chunk by chunk, `config()` and `close()`. The round runner
(rounds.py) hands `generate` the `ImageRequest`s of a round's plan (plan.py) and commits each
batch as it arrives; a backend never writes the store, so the runner stays the only writer
whatever runs the models. Batching happens here and only here: requests of one `group` (one
pipeline mode) share pipeline calls, in request order, `batch_size` at a time.

- `LocalBackend` (the default): the generator in this process (`Generator.iter_batches`).
- `RayBackend`: a pool of Ray actors, each loading the models once from the bundle's picklable
  `ModelSpec` (the same hub id, local folder or starter weights as the notebook) and kept for the
  session, so rounds after the first pay no model loading. Ray places the actors (GPUs per
  worker), restarts one that dies and retries its tasks (`max_restarts` / `max_task_retries`); a
  worker that stays dead has its batches handed to the others. Results are keyed by request
  index, so nothing is committed twice.

Why actors and not Ray Data here: a Ray Data actor pool lives for one dataset execution, so every
round (a few seconds of work in a notebook) would load Stable Diffusion again on every worker,
and a round must stop mid-batch when cancelled and commit batch by batch; long-lived actors give
both. Batches are formed exactly as the local backend forms them (same groups, same batch size),
so an image and its provenance (batch_id, batch_index) are the same on either backend.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
import io
import os
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Union, cast

import numpy as np
from PIL import Image

from ..models.generator import OWN_FLOOR
from ..models.spec import ModelSpec, spec_of
from .jobs import Cancel, is_cancelled

if TYPE_CHECKING:
    from ..models.bundle import Models
    from ..models.generator import Generator

ProgressFn = Callable[[float, int], None]  # (images done, total)

BACKEND_KINDS = ("local", "ray")
_IN_FLIGHT = 2  # tasks queued per actor: the next batch is already there when one finishes


class BackendError(RuntimeError):
    """A backend cannot run (Ray missing, no cluster, models a worker cannot load); names the fix."""


@dataclass
class ImageRequest:
    """One image to make: everything a worker needs, nothing it must look up (plain, picklable data)."""

    index: int  # position in the round's plan: results are keyed (and de-duplicated) by it
    group: int  # requests of a group (one pipeline mode: txt2img, or img2img at one strength) share pipeline calls
    prompt: str
    negative_prompt: str = ""
    seed: int = 0
    steps: int = 20
    guidance: float = 7.5
    strength: float | None = None  # None: text-to-image
    latent_perturbation: float = 0.0
    source: Image.Image | None = None
    guidance_min_sigma: Any = OWN_FLOOR  # the generator's own floor unless given (None: guide every step)


@dataclass
class GeneratedBatch:
    """One finished pipeline call: round indices, images, flags ("" | nan | black | nsfw), where it ran."""

    indices: list[int]
    images: list[Image.Image]
    flags: list[str]
    batch_size: int
    group: int
    worker: str = "local"


def plan_batches(requests: Sequence[ImageRequest], batch_size: int) -> list[list[ImageRequest]]:
    """Requests split into pipeline batches: by group (in order of first appearance), then in request order."""
    groups: dict[int, list[ImageRequest]] = {}
    for r in requests:
        groups.setdefault(int(r.group), []).append(r)
    size = max(1, int(batch_size))
    return [g[k : k + size] for g in groups.values() for k in range(0, len(g), size)]


def _run_group(
    generator: Any,
    reqs: Sequence[ImageRequest],
    *,
    batch_size: int,
    cancel: Any = None,
    progress: Callable[[float, int], None] | None = None,
    floor: Any = OWN_FLOOR,
) -> Iterator[Any]:
    """One `iter_batches` call over requests of one group (the same call locally and on a worker)."""
    first = reqs[0]
    strength = first.strength
    img2img = strength is not None
    return generator.iter_batches(
        [r.prompt for r in reqs],
        negative_prompts=[r.negative_prompt for r in reqs],
        seeds=[int(r.seed) for r in reqs],
        steps=int(first.steps),
        guidance=float(first.guidance),
        images=[r.source for r in reqs] if img2img else None,
        strength=float(strength) if strength is not None else 0.5,
        latent_perturbation=float(first.latent_perturbation) if img2img else 0.0,
        batch_size=batch_size,
        cancel=cancel,
        progress=progress,
        guidance_min_sigma=first.guidance_min_sigma if floor is OWN_FLOOR else floor,
    )


@dataclass(frozen=True)
class _Call:
    """One `generate` call's settings, as a backend's `_generate` gets them."""

    batch_size: int
    cancel: Cancel
    progress: ProgressFn | None


class Backend(ABC):
    """Where a project's models run: the one protocol rounds, evolution, captions and embeddings use.

    The round runner hands `generate` a round's plain requests and commits each batch as it comes
    back; a backend never writes the store. Subclass it (or implement the same methods) to run
    the models elsewhere; `LocalBackend` and `RayBackend` are the two shipped."""

    kind = ""

    @abstractmethod
    def config(self) -> dict[str, object]:
        """Plain data that `backend_from_config` turns back into this backend (project.json, [backend])."""

    def generate(
        self,
        models: Models,
        requests: Sequence[ImageRequest],
        *,
        batch_size: int = 8,
        cancel: Cancel = None,
        progress: ProgressFn | None = None,
    ) -> Iterator[GeneratedBatch]:
        """Finished batches (batched here, by group then request order), each request index at most
        once; stops quietly on cancel (the batch in flight is dropped)."""
        gen = models.require("generator", "generating images")
        yield from self._generate(gen, models, requests, _Call(batch_size, cancel, progress))

    @abstractmethod
    def _generate(
        self, gen: Generator, models: Models, requests: Sequence[ImageRequest], call: _Call
    ) -> Iterator[GeneratedBatch]: ...

    @abstractmethod
    def embed_images(self, models: Models, chunks: Iterable[Sequence[Image.Image]]) -> Iterator[np.ndarray]:
        """One float32 array per chunk, in chunk order."""

    @abstractmethod
    def caption_images(self, models: Models, chunks: Iterable[Sequence[Image.Image]]) -> Iterator[list[str]]:
        """One list of captions per chunk, in chunk order."""

    @abstractmethod
    def close(self) -> None:
        """Release what the backend holds (worker processes); it can be used again after."""


class LocalBackend(Backend):
    """Run everything in this process (the default): the generator, embedder and captioner as given."""

    kind = "local"

    def __repr__(self) -> str:
        return "LocalBackend()"

    def config(self) -> dict[str, object]:
        """Plain data that `backend_from_config` turns back into this backend (project.json, [backend])."""
        return {"kind": "local"}

    def _generate(
        self, gen: Generator, models: Models, requests: Sequence[ImageRequest], call: _Call
    ) -> Iterator[GeneratedBatch]:
        """In order, group by group, in this process."""
        batch_size, cancel, progress = call.batch_size, call.cancel, call.progress
        total = len(requests)
        done = 0
        groups: dict[int, list[ImageRequest]] = {}
        for r in requests:
            groups.setdefault(int(r.group), []).append(r)
        for group, reqs in groups.items():
            if is_cancelled(cancel):
                return
            report = None if progress is None else (lambda d, t, o=done: progress(o + d, total))
            for b in _run_group(gen, reqs, batch_size=batch_size, cancel=cancel, progress=report):
                done += len(b.indices)
                yield GeneratedBatch([reqs[i].index for i in b.indices], b.images, b.flags, b.batch_size, group)

    def embed_images(self, models: Models, chunks: Iterable[Sequence[Image.Image]]) -> Iterator[np.ndarray]:
        """One float32 array per chunk, in order."""
        emb = models.require("embedder", "embedding images")
        for chunk in chunks:
            yield emb.embed_images(list(chunk))

    def caption_images(self, models: Models, chunks: Iterable[Sequence[Image.Image]]) -> Iterator[list[str]]:
        """One list of captions per chunk, in order."""
        cap = models.require("captioner", "captioning images")
        for chunk in chunks:
            yield [str(c) for c in cap(list(chunk))]

    def close(self) -> None:
        """Nothing to release."""


def png_bytes(image: Image.Image) -> bytes:
    """Lossless transport encoding (fast zlib level: the store re-encodes what it keeps)."""
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def from_png(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as im:
        return im.convert("RGB") if im.mode not in ("RGB", "L", "RGBA") else im.copy()


class _Worker:
    """A Ray actor's body: loads the models once, then serves batches (images travel as PNG bytes)."""

    def __init__(self, spec: ModelSpec) -> None:
        self.models = spec.load()
        self._stopped: set[str] = set()

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"pid": os.getpid(), "models": self.models.describe()}
        if self.models.has("generator"):
            gen = self.models.generator
            out["scheduler"] = type(getattr(gen.pipe, "scheduler", None)).__name__
            out["device"] = str(getattr(gen, "device", ""))
        return out

    def stop(self, token: str) -> None:
        self._stopped.add(token)

    def generate(self, token: str, requests: list[dict[str, Any]], batch_size: int) -> list[dict[str, Any]]:
        if token in self._stopped:
            return []
        reqs = [
            ImageRequest(**{**r, "source": from_png(r["source"]) if r.get("source") is not None else None})
            for r in requests
        ]
        gen = self.models.require("generator", "a Ray worker")
        out = []
        for b in _run_group(gen, reqs, batch_size=batch_size, cancel=lambda: token in self._stopped):
            out.append(
                {
                    "indices": [reqs[i].index for i in b.indices],
                    "png": [png_bytes(im) for im in b.images],
                    "flags": list(b.flags),
                    "batch_size": int(b.batch_size),
                }
            )
        return out

    def embed(self, pngs: list[bytes]) -> np.ndarray:
        return self.models.require("embedder", "a Ray worker").embed_images([from_png(p) for p in pngs])

    def caption(self, pngs: list[bytes]) -> list[str]:
        return [str(c) for c in self.models.require("captioner", "a Ray worker")([from_png(p) for p in pngs])]


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as err:
        raise BackendError(
            "the Ray backend needs Ray: pip install 'datacrafter-widget[ray]' "
            "(on the notebook machine and every cluster node)"
        ) from err
    return ray


@dataclass
class _Pool:
    spec: ModelSpec
    actors: list[Any]
    info: list[dict[str, Any]]
    dead: set[int] = field(default_factory=set)

    def alive(self) -> list[int]:
        return [k for k in range(len(self.actors)) if k not in self.dead]


class RayBackend(Backend):
    """Rounds, captioning and embedding on a Ray cluster: `workers` actors with `gpus_per_worker` GPUs each.

    address: "auto" joins the running cluster (`ray start --head` / a cluster's head node), a
    "ray://host:10001" address uses Ray Client (Colab, a laptop), "local" starts a Ray instance in
    this process. If Ray is already initialised here (ray.init(...) in the notebook), that is used.
    batch_size: images per pipeline call on a worker (default: the round's). device: what the
    workers load the models on ("auto": their GPU when they have one). models: a ModelSpec to use
    instead of the one the bundle recorded (bundles built by hand have none).
    """

    kind = "ray"

    def __init__(
        self,
        address: str | None = "auto",
        *,
        workers: int = 1,
        gpus_per_worker: float = 0.0,
        cpus_per_worker: float = 1.0,
        batch_size: int | None = None,
        device: str | None = "auto",
        models: ModelSpec | None = None,
        runtime_env: Mapping[str, object] | None = None,
        max_restarts: int = 2,
        start_timeout: float = 900.0,
    ) -> None:
        if int(workers) < 1:
            raise BackendError(f"workers={workers}: use at least one Ray worker")
        if float(gpus_per_worker) < 0 or float(cpus_per_worker) < 0:
            raise BackendError("gpus_per_worker and cpus_per_worker must be >= 0")
        if batch_size is not None and int(batch_size) < 1:
            raise BackendError(f"batch_size={batch_size}: use at least 1 image per pipeline call")
        if models is not None and not isinstance(models, ModelSpec):
            raise BackendError(f"models must be a dc.ModelSpec, got {type(models).__name__}")
        self.address = address
        self.workers = int(workers)
        self.gpus_per_worker = float(gpus_per_worker)
        self.cpus_per_worker = float(cpus_per_worker)
        self.batch_size = None if batch_size is None else int(batch_size)
        self.device = device
        self.models = models
        self.runtime_env = dict(runtime_env) if runtime_env else None
        self.max_restarts = int(max_restarts)
        self.start_timeout = float(start_timeout)
        self._pool: _Pool | None = None

    def __repr__(self) -> str:
        return (
            f"RayBackend(address={self.address!r}, workers={self.workers}, gpus_per_worker={self.gpus_per_worker}, "
            f"batch_size={self.batch_size})"
        )

    def config(self) -> dict[str, object]:
        """Plain data that `backend_from_config` turns back into this backend (project.json, [backend])."""
        cfg: dict[str, Any] = {
            "kind": "ray",
            "address": self.address,
            "workers": self.workers,
            "gpus_per_worker": self.gpus_per_worker,
            "cpus_per_worker": self.cpus_per_worker,
            "batch_size": self.batch_size,
            "device": self.device,
        }
        if self.runtime_env:
            cfg["runtime_env"] = self.runtime_env
        return cfg

    # ---- the actor pool ---------------------------------------------------------------------------
    @property
    def actors(self) -> list[Any]:
        """The live worker actors (empty before the first use)."""
        return [] if self._pool is None else [self._pool.actors[k] for k in self._pool.alive()]

    def _spec(self, models: Any) -> ModelSpec:
        spec = self.models or spec_of(models)
        if spec is None:
            raise BackendError(
                "the Ray backend loads the models on each worker from a recipe, and these models have none: build "
                "them with dc.starter.models() or dc.Models.stable_diffusion(...), or pass "
                "RayBackend(models=dc.ModelSpec('package.module:factory', {...}))"
            )
        if self.device is not None and "device" in spec.kwargs:
            spec = spec.with_kwargs(device=self.device)
        return spec

    def _connect(self) -> Any:
        ray = _import_ray()
        if not ray.is_initialized():
            address = None if self.address in (None, "", "local") else self.address
            kwargs: dict[str, Any] = {"ignore_reinit_error": True}
            if self.runtime_env:
                kwargs["runtime_env"] = self.runtime_env
            try:
                ray.init(address=address, **kwargs)
            except ConnectionError as err:
                raise BackendError(
                    f"no Ray cluster at address={self.address!r} ({err}): start one with `ray start --head` (see "
                    "docs/ray.md), pass its address, or use RayBackend(address='local') for one on this machine"
                ) from err
        return ray

    def _ensure_pool(self, models: Any, cancel: Any = None) -> _Pool:
        spec = self._spec(models)
        if self._pool is not None and self._pool.spec == spec and self._pool.alive():
            pool = self._pool
            missing = self.workers - len(pool.alive())
            if missing <= 0:
                return pool
        else:
            self.close()
            pool = None
            missing = self.workers
        ray = self._connect()
        total_gpus = float(ray.cluster_resources().get("GPU", 0.0))
        if self.gpus_per_worker > total_gpus:
            raise BackendError(
                f"gpus_per_worker={self.gpus_per_worker} but the Ray cluster has {total_gpus:g} GPU(s): "
                "add GPU nodes or set gpus_per_worker=0 (CPU workers)"
            )
        cls = ray.remote(concurrency_groups={"control": 1})(_Worker)
        new = [
            cls.options(
                num_cpus=self.cpus_per_worker,
                num_gpus=self.gpus_per_worker,
                max_restarts=self.max_restarts,
                max_task_retries=self.max_restarts,
            ).remote(spec)
            for _ in range(missing)
        ]
        info = self._wait_ready(ray, new, cancel)
        if pool is None:
            pool = _Pool(spec, new, info)
        else:  # replace the dead ones
            keep = pool.alive()
            pool = _Pool(spec, [pool.actors[k] for k in keep] + new, [pool.info[k] for k in keep] + info)
        self._pool = pool
        self._check_models(models, pool.info)
        return pool

    def _wait_ready(self, ray: Any, actors: list[Any], cancel: Any) -> list[dict[str, Any]]:
        refs = [a.describe.remote() for a in actors]
        deadline = time.monotonic() + self.start_timeout
        pending = list(refs)
        while pending:
            if is_cancelled(cancel):
                for a in actors:
                    ray.kill(a)
                raise BackendError("cancelled while the Ray workers were loading their models")
            if time.monotonic() > deadline:
                for a in actors:
                    ray.kill(a)
                raise BackendError(
                    f"{len(pending)} of {len(actors)} Ray worker(s) not ready after {self.start_timeout:.0f}s: each "
                    f"needs {self.cpus_per_worker:g} CPU and {self.gpus_per_worker:g} GPU, the cluster has "
                    f"{ray.cluster_resources()}; lower workers / gpus_per_worker or add nodes"
                )
            _, pending = ray.wait(pending, num_returns=len(pending), timeout=0.5)
        try:
            return list(ray.get(refs))
        except Exception as err:
            raise BackendError(
                f"a Ray worker could not load the models: {err}. Every node needs datacrafter-widget "
                "installed and the model files (hub cache or local folder) reachable"
            ) from err

    @staticmethod
    def _check_models(models: Any, info: list[dict[str, Any]]) -> None:
        """The workers must run what the notebook would: same model names, same scheduler."""
        local = models.describe() if hasattr(models, "describe") else {}
        sched = None
        if hasattr(models, "has") and models.has("generator"):
            sched = type(getattr(models.generator.pipe, "scheduler", None)).__name__
        for w in info:
            for kind in ("generator", "embedder", "captioner"):
                if kind in local and w["models"].get(kind) != local[kind]:
                    raise BackendError(
                        f"the Ray workers load {kind} {w['models'].get(kind)!r} but this notebook uses "
                        f"{local[kind]!r}: pass RayBackend(models=dc.ModelSpec(...)) for the same models"
                    )
            if sched and w.get("scheduler") and w["scheduler"] != sched:
                raise BackendError(
                    f"the Ray workers' scheduler is {w['scheduler']}, this notebook's is {sched}: build the "
                    "models with scheduler=... so the recipe carries it"
                )

    def close(self) -> None:
        """Stop the worker actors (the cluster stays up)."""
        pool, self._pool = self._pool, None
        if pool is None:
            return
        try:
            import ray
        except ImportError:
            return
        if ray.is_initialized():
            for a in pool.actors:
                with contextlib.suppress(Exception):  # already gone
                    ray.kill(a)

    # ---- work -------------------------------------------------------------------------------------
    def _generate(
        self, gen: Generator, models: Models, requests: Sequence[ImageRequest], call: _Call
    ) -> Iterator[GeneratedBatch]:
        """As they arrive from any worker."""
        batch_size, cancel, progress = call.batch_size, call.cancel, call.progress
        pool = self._ensure_pool(models, cancel)
        ray = _import_ray()
        size = self.batch_size or int(batch_size)
        floor = getattr(gen, "guidance_min_sigma", None)
        batches = []
        for b in plan_batches(requests, size):
            batches.append(
                [
                    {
                        "index": int(r.index),
                        "group": int(r.group),
                        "prompt": r.prompt,
                        "negative_prompt": r.negative_prompt,
                        "seed": int(r.seed),
                        "steps": int(r.steps),
                        "guidance": float(r.guidance),
                        "strength": r.strength,
                        "latent_perturbation": float(r.latent_perturbation),
                        "source": None if r.source is None else png_bytes(r.source),
                        "guidance_min_sigma": floor if r.guidance_min_sigma is OWN_FLOOR else r.guidance_min_sigma,
                    }
                    for r in b
                ]
            )
        token = uuid.uuid4().hex
        total = len(requests)
        committed: set[int] = set()
        group_of = {int(r.index): int(r.group) for r in requests}
        yield from self._dispatch(
            ray,
            pool,
            batches,
            lambda a, b: a.generate.remote(token, b, size),
            cancel,
            token,
            lambda subs, k: self._batches(subs, committed, group_of, total, progress, pool, k),
        )

    @staticmethod
    def _batches(
        subs: list[dict[str, Any]],
        committed: set[int],
        group_of: dict[int, int],
        total: int,
        progress: ProgressFn | None,
        pool: _Pool,
        k: int,
    ) -> list[GeneratedBatch]:
        out = []
        for sub in subs:
            keep = [j for j, i in enumerate(sub["indices"]) if i not in committed]
            if not keep:
                continue
            idx = [sub["indices"][j] for j in keep]
            committed.update(idx)
            out.append(
                GeneratedBatch(
                    idx,
                    [from_png(sub["png"][j]) for j in keep],
                    [sub["flags"][j] for j in keep],
                    int(sub["batch_size"]),
                    group_of[idx[0]],
                    worker=f"ray:{pool.info[k].get('pid', k)}",
                )
            )
        if progress is not None and out:
            progress(float(len(committed)), total)
        return out

    def _dispatch(
        self,
        ray: Any,
        pool: _Pool,
        payloads: list[Any],
        submit: Callable[[Any, Any], Any],
        cancel: Any,
        token: str | None,
        handle: Callable[[Any, int], list[Any]],
    ) -> Iterator[Any]:
        """Keep every live actor busy; hand back results as they arrive; re-queue the work of a dead actor."""
        from ray.exceptions import RayActorError

        queue = deque(range(len(payloads)))
        pending: dict[Any, tuple[int, int]] = {}
        load = {k: 0 for k in pool.alive()}
        try:
            while queue or pending:
                if is_cancelled(cancel):
                    return
                for k in sorted(pool.alive(), key=lambda a: load[a]):
                    while queue and load[k] < _IN_FLIGHT:
                        p = queue.popleft()
                        pending[submit(pool.actors[k], payloads[p])] = (k, p)
                        load[k] += 1
                if not pending:
                    raise BackendError(
                        "every Ray worker died: check the cluster (`ray status`) and run the round again; "
                        "what finished is stored"
                    )
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=0.25)
                for ref in ready:
                    k, p = pending.pop(ref)
                    load[k] -= 1
                    try:
                        result = ray.get(ref)
                    except RayActorError:  # restarts used up: this worker is gone, its work goes elsewhere
                        pool.dead.add(k)
                        queue.appendleft(p)
                        continue
                    yield from handle(result, k)
        finally:
            if pending:
                for ref in pending:
                    with contextlib.suppress(Exception):  # already finished
                        ray.cancel(ref)
                if token is not None:
                    for k in pool.alive():
                        pool.actors[k].stop.options(concurrency_group="control").remote(token)

    def _map(self, models: Any, method: str, chunks: Iterable[Sequence[Image.Image]]) -> Iterator[Any]:
        """Chunks spread over the workers; results handed back in chunk order."""
        pool = self._ensure_pool(models)
        ray = _import_ray()
        from ray.exceptions import RayActorError

        source = iter(chunks)
        pending: dict[Any, tuple[int, int, list[bytes]]] = {}
        done: dict[int, Any] = {}
        retry: deque[tuple[int, list[bytes]]] = deque()
        load = {k: 0 for k in pool.alive()}
        nxt = 0
        count = 0
        exhausted = False
        while True:
            for k in sorted(pool.alive(), key=lambda a: load[a]):
                while load[k] < _IN_FLIGHT and (retry or not exhausted):
                    if retry:
                        c, data = retry.popleft()
                    else:
                        try:
                            data = [png_bytes(im) for im in next(source)]
                        except StopIteration:
                            exhausted = True
                            break
                        c, count = count, count + 1
                    pending[getattr(pool.actors[k], method).remote(data)] = (k, c, data)
                    load[k] += 1
            while nxt in done:
                yield done.pop(nxt)
                nxt += 1
            if not pending:
                if exhausted and not retry:
                    return
                raise BackendError("every Ray worker died: check the cluster (`ray status`) and try again")
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=0.25)
            for ref in ready:
                k, c, data = pending.pop(ref)
                load[k] -= 1
                try:
                    done[c] = ray.get(ref)
                except RayActorError:
                    pool.dead.add(k)
                    retry.append((c, data))

    def embed_images(self, models: Models, chunks: Iterable[Sequence[Image.Image]]) -> Iterator[np.ndarray]:
        """One float32 array per chunk, in order, computed on the workers."""
        models.require("embedder", "embedding images")
        for arr in self._map(models, "embed", chunks):
            yield np.asarray(arr, dtype=np.float32)

    def caption_images(self, models: Models, chunks: Iterable[Sequence[Image.Image]]) -> Iterator[list[str]]:
        """One list of captions per chunk, in order, computed on the workers."""
        models.require("captioner", "captioning images")
        yield from self._map(models, "caption", chunks)


#: what `backend=` takes: a backend, None / "local" / "ray", or its config() table
BackendConfig = Union[Backend, str, Mapping[str, object], None]


def backend_from_config(config: BackendConfig) -> Backend:
    """A backend from plain data: None / "local" / {"kind": "local"} or {"kind": "ray", "address": ..., ...}.

    The same data `backend.config()` writes (project.json) and a run config's [backend] section holds.
    """
    if config is None:
        return LocalBackend()
    if isinstance(config, Backend):
        return config
    if not isinstance(config, (str, Mapping)) and callable(getattr(config, "generate", None)):
        return cast(Backend, config)  # duck-typed: the same methods without the base class
    if isinstance(config, str):
        config = {"kind": config}
    if not isinstance(config, Mapping):
        raise BackendError(f"a backend is 'local', 'ray' or a table with kind = ...; got {type(config).__name__}")
    cfg: dict[str, Any] = dict(config)  # a TOML / json table: RayBackend checks each value
    kind = str(cfg.pop("kind", "local"))
    if kind not in BACKEND_KINDS:
        raise BackendError(f"unknown backend kind {kind!r}: use one of {list(BACKEND_KINDS)}")
    if kind == "local":
        if cfg:
            raise BackendError(f"the local backend takes no settings, got {sorted(cfg)}")
        return LocalBackend()
    allowed = {
        "address",
        "workers",
        "gpus_per_worker",
        "cpus_per_worker",
        "batch_size",
        "device",
        "runtime_env",
        "max_restarts",
        "start_timeout",
    }
    unknown = sorted(set(cfg) - allowed)
    if unknown:
        raise BackendError(f"unknown Ray backend setting(s) {unknown}: use {sorted(allowed)}")
    return RayBackend(**cfg)
