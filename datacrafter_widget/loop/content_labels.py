"""Content labels per image: short words that say what is in it (class, colours, style, background).

DataCrafter asks a multimodal LLM. The default here works offline with the CLIP model the project
already has: `ClipVocabularyLabeler` scores each image embedding against a vocabulary (class names,
recurring caption words and collocations, a default list of visual attributes, the user's words)
and keeps the words that stand out for *this* image.

Word vectors. A word that occurs in the captions is read in context: the mean text embedding of the
captions containing it minus that of the captions without it (a CLIP trained on captions, like the
starter's, has never seen "red" alone). Other words: the mean over prompt templates.

Calibration. Raw similarities are not comparable across words (some are close to every image), so
each word is calibrated over a reference population -- the embeddings given to `calibrate()` (the
real images), else the batch itself when it has >= `min_population` images:

    z[i, w] = (sim(i, w) - mean_w) / max(std_w, min_spread)

A word is kept for an image when
  - z >= `z_min` (3.0; `z_min_template` 4.0 for template words when captions exist, since a small
    caption-trained CLIP reads unseen words as echoes of nearby concepts), or
  - the word's scores over the population are clearly bimodal (a 2-component Gaussian mixture with
    means >= `separation` pooled SDs apart) and the image lies in the high mode. This matters: a
    word that perfectly separates a share p of the images only reaches z = sqrt((1 - p) / p) on
    them (2 for p = 1/5, 1 for p = 1/2), so a z threshold alone misses every common attribute, or
  - it is the leading class name (class names are exclusive and exhaustive): z >= `z_best` and
    `margin` ahead of the next class.
Then at most `per_group` words per group (one class name, two colours, ...), at most `top_k` in
all, at least `min_labels` (the best trusted words), and a single word inside a kept phrase gives
way to the phrase. For smaller uncalibrated batches the rule is "relative": a softmax over each
group's words (CLIP's logit scale), keeping words with probability >= `relative` x the group's best.

A VLM can be plugged in instead: `TransformersVLMLabeler` (a transformers image-text-to-text
pipeline, or a generative model + processor such as BLIP) or `OpenAICompatibleLabeler` (any
/v1/chat/completions server: vLLM, Ollama, LM Studio, OpenAI). All labelers share
`Labeler.__call__(images, embeddings=None) -> list[list[str]]`.
"""

from __future__ import annotations

import base64
import io
import json
import re
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, Sequence, runtime_checkable

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    from ..models.embedder import Embedder

__all__ = [
    "Labeler",
    "LabelerError",
    "Vocabulary",
    "DEFAULT_ATTRIBUTES",
    "build_vocabulary",
    "caption_terms",
    "parse_labels",
    "ClipVocabularyLabeler",
    "OpenAICompatibleLabeler",
    "TransformersVLMLabeler",
]


class LabelerError(RuntimeError):
    """A labeler could not label; the message names the cause and the fix."""


@runtime_checkable
class Labeler(Protocol):
    """Anything that returns a list of content labels per image."""

    def __call__(self, images: Sequence[Image.Image], embeddings: np.ndarray | None = None) -> list[list[str]]: ...


# ----------------------------------------------------------------------------- vocabulary

_COLOURS = [
    "red",
    "orange",
    "yellow",
    "green",
    "blue",
    "purple",
    "pink",
    "brown",
    "black",
    "white",
    "gray",
    "light blue",
    "dark",
    "bright",
    "colorful",
    "monochrome",
]

DEFAULT_ATTRIBUTES: dict[str, list[str]] = {
    "colour": _COLOURS,
    "background": [f"{c} background" for c in _COLOURS[:11]]
    + [
        "plain background",
        "cluttered background",
        "outdoors",
        "indoors",
        "grass",
        "sky",
        "water",
        "snow",
        "sand",
        "road",
        "forest",
        "room",
    ],
    "texture": ["smooth", "striped", "spotted", "furry", "shiny", "rough", "wooden", "metallic", "fabric"],
    "style": [
        "photo",
        "cartoon",
        "sketch",
        "drawing",
        "painting",
        "3d render",
        "pixel art",
        "text",
        "close-up",
        "low resolution",
    ],
    "quality": ["blurry", "sharp", "noisy", "overexposed", "dark lighting", "distorted", "cropped"],
    "shape": ["thin", "thick", "slanted", "round", "small", "large", "centered", "several objects"],
}

# per-group caps: an image has one class, a foreground and a background colour, ...
DEFAULT_PER_GROUP: dict[str, int] = {
    "class": 1,
    "colour": 2,
    "background": 1,
    "texture": 1,
    "style": 1,
    "quality": 1,
    "shape": 2,
    "caption": 3,
    "user": 3,
}

_STOP = set(
    """a an the of on in at to with and or but for from by as is are was were be been being this that
    these those it its there here some any very into onto over under near behind front photo image picture
    showing shows shown has have having one two""".split()
)


@dataclass
class Vocabulary:
    """Words with the group each belongs to (groups cap how many words of a kind an image gets)."""

    words: list[str] = field(default_factory=list)
    groups: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.words)

    def add(self, word: str, group: str) -> None:
        w = " ".join(str(word).strip().split())
        if w and w.lower() not in {x.lower() for x in self.words}:
            self.words.append(w)
            self.groups.append(group)


def _tokens(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+(?:[-'][a-z0-9]+)*", text.lower())


def caption_terms(
    captions: Sequence[str],
    *,
    min_count: int = 2,
    max_terms: int = 200,
    exclude: Sequence[str] = (),
    max_df: float = 0.5,
    min_pmi: float = 0.3,
) -> list[str]:
    """Words and two-word phrases that recur in the captions, most frequent first.

    Stop words and words in more than `max_df` of the captions ("background" in every starter
    caption) are dropped: they separate nothing. A two-word phrase is kept when it is a collocation
    (pointwise mutual information >= `min_pmi`: "slanted left", "black background"), not a chance
    pairing of independent attributes ("thick red"); a word that occurs almost only inside one
    kept phrase ("left") gives way to the phrase."""
    excl = {e.lower() for e in exclude}
    uni: Counter[str] = Counter()
    bi: Counter[tuple[str, str]] = Counter()
    n_docs = 0
    for cap in captions:
        if not cap:
            continue
        n_docs += 1
        us: set[str] = set()
        bs: set[tuple[str, str]] = set()
        for segment in re.split(r"[,.;:!?()]", str(cap)):
            toks = _tokens(segment)
            us.update(t for t in toks if t not in _STOP and t not in excl and not t.isdigit())
            # consecutive content tokens within a clause (a stop word or punctuation breaks a phrase)
            for a, b in zip(toks, toks[1:]):
                if not ({a, b} & (_STOP | excl)) and not a.isdigit() and not b.isdigit():
                    bs.add((a, b))
        uni.update(us)  # document frequency: a term counts once per caption
        bi.update(bs)
    if n_docs == 0:
        return []
    phrases: dict[str, int] = {}
    for (a, b), c in bi.items():
        # a word too common to stand alone ("background") is kept as the qualifier of a phrase
        qualifier = max(uni[a], uni[b]) > max_df * n_docs
        pmi = np.log(n_docs * c / (uni[a] * uni[b]))
        if c >= min_count and c <= max_df * n_docs and (pmi >= min_pmi or qualifier):
            phrases[f"{a} {b}"] = c
    words: dict[str, int] = {}
    for t, c in uni.items():
        if c < min_count or c > max_df * n_docs:
            continue
        if any(t in p.split() and pc >= 0.9 * c for p, pc in phrases.items()):
            continue
        words[t] = c
    terms = sorted({**words, **phrases}.items(), key=lambda kv: (-kv[1], kv[0]))
    return [t for t, _ in terms[:max_terms]]


def build_vocabulary(
    class_names: Sequence[str] = (),
    captions: Sequence[str] = (),
    extra_words: Sequence[str] = (),
    attributes: dict[str, list[str]] | None = None,
    *,
    min_count: int = 2,
    max_caption_terms: int = 200,
) -> Vocabulary:
    """Class names, the user's words, recurring caption terms, then the default visual attributes.
    A caption term that is also a known attribute takes the attribute's group (so colour caps apply)."""
    attributes = DEFAULT_ATTRIBUTES if attributes is None else attributes
    attr_group = {w.lower(): g for g, ws in attributes.items() for w in ws}
    vocab = Vocabulary()
    for c in class_names:
        vocab.add(c, "class")
    for w in extra_words:
        vocab.add(w, "user")
    for t in caption_terms(captions, min_count=min_count, max_terms=max_caption_terms, exclude=class_names):
        group = attr_group.get(t)
        if group is None and len(t.split()) == 2 and t.endswith(" background"):
            group = "background"
        vocab.add(t, group or "caption")
    for g, ws in attributes.items():
        for w in ws:
            vocab.add(w, g)
    return vocab


# ----------------------------------------------------------------------------- CLIP labeler


def _as_embeddings(x: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float32)
    if arr.ndim != 2:
        raise LabelerError(f"{name} must be a 2D array (n, d); got shape {arr.shape}.")
    if not np.isfinite(arr).all():
        raise LabelerError(f"{name} has NaN or inf values; re-embed those images.")
    norms = np.linalg.norm(arr, axis=1, keepdims=True)
    return arr / np.maximum(norms, 1e-12)


class ClipVocabularyLabeler:
    """Offline content labels: CLIP similarity to a vocabulary, thresholded per word (see module doc).

    embedder: follows the Embedder contract (embed_images / embed_texts, L2-normalised float32).
    vocabulary: a Vocabulary or a list of words (group "user"); None builds one from class_names,
    captions, extra_words and DEFAULT_ATTRIBUTES. threshold: "calibrated" (per-word z-score),
    "relative" (softmax within each group relative to its best word) or a float (plain cosine).
    max_fit: the per-word two-mode mixture is fitted on at most this many calibration images.
    """

    def __init__(
        self,
        embedder: Embedder,
        vocabulary: Vocabulary | Sequence[str] | None = None,
        extra_words: Sequence[str] = (),
        threshold: str | float = "calibrated",
        *,
        class_names: Sequence[str] = (),
        captions: Sequence[str] = (),
        attributes: dict[str, list[str]] | None = None,
        templates: Sequence[str] = ("{}", "a photo of {}"),
        class_templates: Sequence[str] | None = None,
        z_min: float = 3.0,
        z_min_template: float = 4.0,
        z_best: float = 1.0,
        margin: float = 0.5,
        min_spread: float = 1e-3,
        relative: float = 0.5,
        top_k: int = 6,
        min_labels: int = 1,
        per_group: dict[str, int] | None = None,
        min_population: int = 20,
        separation: float | None = 2.5,
        context: bool = True,
        min_context: int = 3,
        max_captions: int = 2000,
        max_fit: int = 2000,
    ) -> None:
        if not (threshold in ("calibrated", "relative") or isinstance(threshold, (int, float))):
            raise LabelerError(f"threshold must be 'calibrated', 'relative' or a number; got {threshold!r}.")
        self.embedder = embedder
        if vocabulary is None:
            vocab = build_vocabulary(class_names, captions, extra_words, attributes)
        elif isinstance(vocabulary, Vocabulary):
            vocab = Vocabulary(list(vocabulary.words), list(vocabulary.groups))
            for w in extra_words:
                vocab.add(w, "user")
        else:
            vocab = Vocabulary()
            for c in class_names:
                vocab.add(c, "class")
            for w in list(vocabulary) + list(extra_words):
                vocab.add(w, "user")
        if len(vocab) == 0:
            raise LabelerError("the vocabulary is empty; pass class_names, captions, extra_words or a vocabulary.")
        self.vocabulary = vocab
        self.threshold = threshold
        self.templates = tuple(templates)
        self.class_templates = (
            tuple(class_templates)
            if class_templates is not None
            else tuple(getattr(embedder, "templates", None) or ("a photo of a {}",))
        )
        self.z_min, self.z_best, self.margin = float(z_min), float(z_best), float(margin)
        self.z_min_template = float(z_min_template)
        self.min_spread = float(min_spread)
        self.relative, self.top_k, self.min_labels = float(relative), int(top_k), int(min_labels)
        self.per_group = {**DEFAULT_PER_GROUP, **(per_group or {})}
        self.min_population = int(min_population)
        self.captions = [str(c) for c in captions if c]
        self.context, self.min_context, self.max_captions = bool(context), int(min_context), int(max_captions)
        self.separation = None if separation is None else float(separation)
        self.max_fit = max(self.min_population, int(max_fit))
        self._word_emb: np.ndarray | None = None
        self._mu: np.ndarray | None = None
        self._sd: np.ndarray | None = None
        self._cut: np.ndarray | None = None
        self._active_cut: np.ndarray | None = None
        self._trusted: np.ndarray | None = None

    # -- word embeddings ------------------------------------------------------------------------
    @property
    def word_embeddings(self) -> np.ndarray:
        """(V, d) unit vectors. A word that occurs in at least `min_context` captions gets its
        *caption-context direction*: mean embedding of the captions that contain it minus that of
        the captions that do not. This reads the word the way the model saw it in training (a CLIP
        trained on captions, like the starter's, has never seen "red" alone) and contrasts away what
        all captions share. Other words: mean over templates (class names use the class templates)."""
        if self._word_emb is None:
            words, groups = self.vocabulary.words, self.vocabulary.groups
            ctx = self._context_directions(words) if self.context else {}
            # without captions there is nothing better than templates: trust them all
            self._trusted = np.array([w in ctx or g == "class" or not ctx for w, g in zip(words, groups)])
            rows = []
            for w, g in zip(words, groups):
                if w in ctx:
                    rows.append(ctx[w])
                    continue
                temps = self.class_templates if g == "class" else self.templates
                e = np.asarray(self.embedder.embed_texts([t.format(w) for t in temps]), dtype=np.float32)
                e = e.mean(axis=0)
                rows.append(e / max(float(np.linalg.norm(e)), 1e-12))
            self._word_emb = np.stack(rows).astype(np.float32)
        return self._word_emb

    def _context_directions(self, words: Sequence[str]) -> dict[str, np.ndarray]:
        caps = list(dict.fromkeys(c for c in self.captions if c))
        if len(caps) < 2 * self.min_context:
            return {}
        if len(caps) > self.max_captions:
            rng = np.random.default_rng(0)
            caps = [caps[i] for i in sorted(rng.choice(len(caps), self.max_captions, replace=False))]
        toks = [" " + " ".join(_tokens(c)) + " " for c in caps]
        cap_emb = np.asarray(self.embedder.embed_texts(caps), dtype=np.float32)
        out = {}
        for w in words:
            key = " " + " ".join(_tokens(w)) + " "
            has = np.array([key in t for t in toks])
            if key.strip() and self.min_context <= has.sum() <= len(caps) - self.min_context:
                d = cap_emb[has].mean(axis=0) - cap_emb[~has].mean(axis=0)
                out[w] = d / max(float(np.linalg.norm(d)), 1e-12)
        return out

    def calibrate(self, embeddings: np.ndarray) -> "ClipVocabularyLabeler":
        """Per-word similarity mean and spread over a reference population (the real images)."""
        e = _as_embeddings(embeddings, "embeddings")
        if len(e) < 2:
            raise LabelerError("calibrate() needs at least 2 reference images (the real dataset's embeddings).")
        s = e @ self.word_embeddings.T
        self._mu, self._sd, self._cut = self._stats(s)
        return self

    def _stats(self, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per word: mean, spread, and the z above which an image is in the word's high mode (inf
        when the word's scores are not clearly bimodal: a two-component Gaussian mixture whose
        means lie >= `separation` pooled SDs apart)."""
        from sklearn.mixture import GaussianMixture

        mu, sd = s.mean(axis=0), np.maximum(s.std(axis=0), self.min_spread)
        z = (s - mu) / sd
        cut = np.full(s.shape[1], np.inf)
        if self.separation is None or len(s) < self.min_population:
            return mu, sd, cut
        grid = np.linspace(-4, 12, 321)[:, None]
        # The mixture is fitted on at most `max_fit` images (a fixed random subset): its means and
        # spreads are as good from 2,000 images as from 10,000, at a fifth of the time.
        if len(z) > self.max_fit:
            z = z[np.sort(np.random.default_rng(0).choice(len(z), self.max_fit, replace=False))]
        for j in range(s.shape[1]):
            if float(np.ptp(z[:, j])) < 1e-6:
                continue
            g = GaussianMixture(2, random_state=0).fit(z[:, j : j + 1])
            m, v, w = g.means_.ravel(), g.covariances_.ravel(), g.weights_
            hi = int(np.argmax(m))
            if (m[hi] - m[1 - hi]) / np.sqrt(v.mean()) < self.separation or w[hi] > 0.9:
                continue
            post = g.predict_proba(grid)[:, hi]
            above = np.flatnonzero((post >= 0.5) & (grid[:, 0] > m[1 - hi]))
            if above.size:
                cut[j] = grid[above[0], 0]
        return mu, sd, cut

    # -- scoring --------------------------------------------------------------------------------
    def scores(self, embeddings: np.ndarray) -> tuple[np.ndarray, str]:
        """(n, V) scores and the rule they are meant for ('z', 'relative' or 'cosine')."""
        e = _as_embeddings(embeddings, "embeddings")
        if e.shape[1] != self.word_embeddings.shape[1]:
            raise LabelerError(
                f"image embeddings have dimension {e.shape[1]} but the vocabulary's text embeddings have "
                f"{self.word_embeddings.shape[1]}; use the same CLIP model for both."
            )
        s = e @ self.word_embeddings.T
        if isinstance(self.threshold, (int, float)) and not isinstance(self.threshold, bool):
            return s, "cosine"
        if self.threshold == "calibrated":
            if self._mu is not None:
                self._active_cut = self._cut
                return (s - self._mu) / self._sd, "z"
            if len(e) >= self.min_population:
                mu, sd, self._active_cut = self._stats(s)
                return (s - mu) / sd, "z"
        scale = float(getattr(self.embedder, "logit_scale", 100.0))
        return s * scale, "relative"

    def select(self, scores: np.ndarray, rule: str) -> list[list[str]]:
        """Apply the rule, group caps, top_k and min_labels to each row of scores."""
        words, groups = self.vocabulary.words, np.array(self.vocabulary.groups)
        keep = np.zeros(scores.shape, dtype=bool)
        if rule == "z":
            trusted_all = self._trusted if self._trusted is not None else np.ones(scores.shape[1], dtype=bool)
            keep = scores >= np.where(trusted_all, self.z_min, self.z_min_template)[None, :]
            if self._active_cut is not None:
                # the mode rule only for words read from caption context and class names; a template
                # word a small caption-trained CLIP never saw ("green background") can echo a
                # neighbouring concept, so it needs the strict z_min
                keep |= (scores >= self._active_cut[None, :]) & trusted_all[None, :]
            # class names are exclusive and exhaustive: the leading class is named
            cols = np.flatnonzero(groups == "class")
            if len(cols) > 1:
                zz = scores[:, cols]
                top2 = -np.sort(-zz, axis=1)[:, :2]
                lead = (top2[:, 0] >= self.z_best) & (top2[:, 0] - top2[:, 1] >= self.margin)
                rows = np.flatnonzero(lead)
                keep[rows, cols[np.argmax(zz[rows], axis=1)]] = True
        elif rule == "cosine":
            keep = scores >= float(self.threshold)
        else:  # relative: softmax within each group, keep p >= relative * best p of the group
            for g in np.unique(groups):
                cols = np.flatnonzero(groups == g)
                z = scores[:, cols] - scores[:, cols].max(axis=1, keepdims=True)
                p = np.exp(z)
                p /= p.sum(axis=1, keepdims=True)
                keep[:, cols] = p >= self.relative * p.max(axis=1, keepdims=True)
        out = []
        for i in range(scores.shape[0]):
            order = np.argsort(-scores[i], kind="stable")
            chosen: list[int] = []
            used: Counter[str] = Counter()
            for j in order:
                if len(chosen) >= self.top_k:
                    break
                g = groups[j]
                if used[g] >= self.per_group.get(g, 2):
                    continue
                if keep[i, j]:
                    chosen.append(int(j))
                    used[g] += 1
            if len(chosen) < self.min_labels:  # fill with the best-scoring trusted words
                trusted = self._trusted if self._trusted is not None else np.ones(len(words), dtype=bool)
                for j in order:
                    if len(chosen) >= self.min_labels:
                        break
                    if j not in chosen and (trusted[j] or not trusted.any()):
                        chosen.append(int(j))
            picked = [words[j] for j in chosen]
            # "black" adds nothing next to "black background": keep the phrase
            in_phrases = {t for w in picked if " " in w for t in w.split()}
            out.append([w for w in picked if " " in w or w not in in_phrases] or picked[:1])
        return out

    def __call__(self, images: Sequence[Image.Image] | None, embeddings: np.ndarray | None = None) -> list[list[str]]:
        """Labels per image; pass `embeddings` (from the same embedder) to skip embedding again."""
        if embeddings is None:
            if images is None or len(images) == 0:
                return []
            embeddings = self.embedder.embed_images(list(images))
        e = np.asarray(embeddings)
        if images is not None and len(images) and len(images) != len(e):
            raise LabelerError(f"got {len(images)} images but {len(e)} embeddings; pass one embedding per image.")
        if len(e) == 0:
            return []
        return self.select(*self.scores(e))


# ----------------------------------------------------------------------------- VLM labelers

DEFAULT_PROMPT = (
    "List short content labels for this image: the main object, its colours, the background, the "
    "style and any defects. Answer with a JSON list of lowercase strings, at most {max_labels}."
)


def parse_labels(text: str, max_labels: int = 8) -> list[str]:
    """Labels from a model's answer: a JSON list / {"labels": [...]} if present, else comma, semicolon
    or line separated items; bullets, numbering and quotes stripped; lowercase; no duplicates."""
    text = (text or "").strip()
    items: list[str] | None = None
    fenced = re.search(r"```(?:json)?\s*(.*?)```", text, flags=re.S)
    candidate = fenced.group(1) if fenced else text
    for m in (re.search(r"\[.*\]", candidate, flags=re.S), re.search(r"\{.*\}", candidate, flags=re.S)):
        if not m:
            continue
        try:
            obj = json.loads(m.group(0))
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict):
            obj = obj.get("labels") or next((v for v in obj.values() if isinstance(v, list)), None)
        if isinstance(obj, list):
            items = [str(x) for x in obj if isinstance(x, (str, int, float))]
            break
    if items is None:
        if ":" in text.split("\n")[0] and "," in text:
            text = text.split(":", 1)[1]
        items = re.split(r"[,;\n]", text)
    out: list[str] = []
    for it in items:
        s = re.sub(r"^\s*(?:[-*\u2022]|\d+[.)])\s*", "", it)
        s = s.strip().strip("\"'`.").strip().lower()
        s = " ".join(s.split())
        if s and len(s) <= 40 and s not in out:
            out.append(s)
    return out[:max_labels]


def _png_data_url(image: Any) -> str:
    from PIL import Image

    if not isinstance(image, Image.Image):
        raise LabelerError(f"expected a PIL image, got {type(image).__name__}.")
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


class OpenAICompatibleLabeler:
    """Labels from any OpenAI-compatible chat endpoint with vision (one request per image).

    base_url: "http://host:port/v1" (or the full .../chat/completions URL). The API key, if any, is
    sent as a Bearer token and never stored in the project.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        *,
        prompt: str = DEFAULT_PROMPT,
        max_labels: int = 8,
        timeout: float = 60.0,
        max_tokens: int = 100,
        temperature: float = 0.0,
    ) -> None:
        if not base_url or not base_url.startswith(("http://", "https://")):
            raise LabelerError(f"base_url must start with http:// or https://; got {base_url!r}.")
        url = base_url.rstrip("/")
        if not url.endswith("/chat/completions"):
            url = url + ("/chat/completions" if url.endswith("/v1") else "/v1/chat/completions")
        self.url, self.model, self._api_key = url, model, api_key
        self.prompt, self.max_labels, self.timeout = prompt, int(max_labels), float(timeout)
        self.max_tokens, self.temperature = int(max_tokens), float(temperature)

    def __repr__(self) -> str:  # never show the key
        return f"OpenAICompatibleLabeler({self.url!r}, model={self.model!r})"

    def label_one(self, image: Any) -> list[str]:
        body = {
            "model": self.model,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": self.prompt.format(max_labels=self.max_labels)},
                        {"type": "image_url", "image_url": {"url": _png_data_url(image)}},
                    ],
                }
            ],
        }
        headers = {"Content-Type": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        req = urllib.request.Request(self.url, data=json.dumps(body).encode("utf-8"), headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                payload = json.loads(resp.read().decode("utf-8"))
        except urllib.error.HTTPError as err:
            detail = err.read().decode("utf-8", "replace")[:300]
            raise LabelerError(f"{self.url} answered HTTP {err.code}: {detail} (check model name and API key)") from err
        except urllib.error.URLError as err:
            raise LabelerError(f"could not reach {self.url}: {err.reason} (is the server running?)") from err
        except json.JSONDecodeError as err:
            raise LabelerError(f"{self.url} did not answer JSON: {err}") from err
        try:
            content = payload["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError) as err:
            raise LabelerError(f"{self.url} answered without choices[0].message.content: {str(payload)[:300]}") from err
        if isinstance(content, list):  # some servers return content parts
            content = " ".join(p.get("text", "") for p in content if isinstance(p, dict))
        return parse_labels(str(content), self.max_labels)

    def __call__(self, images: Sequence[Image.Image], embeddings: np.ndarray | None = None) -> list[list[str]]:
        return [self.label_one(im) for im in images]


def _labels_from_answer(text: str, max_labels: int) -> list[str]:
    """A list-like answer is parsed as labels; a sentence (a caption) gives its content words."""
    if re.search(r"[\[{,;\n]", text or ""):
        return parse_labels(text, max_labels)
    words = [t for t in _tokens(text or "") if t not in _STOP]
    return list(dict.fromkeys(words))[:max_labels]


class TransformersVLMLabeler:
    """Labels from a transformers vision-language model.

    model_or_pipeline: an "image-text-to-text" Pipeline (asked with `prompt` as a chat message), a
    hub id / local path to build one from, or a generative model with `generate` (e.g. BLIP,
    GIT, Llava) plus its `processor`: image-to-text captioners need no prompt (labels are the
    caption's content words); instruction models get `model_prompt` as the text input.
    """

    def __init__(
        self,
        model_or_pipeline: Any,
        processor: Any = None,
        *,
        prompt: str = DEFAULT_PROMPT,
        model_prompt: str | None = None,
        max_labels: int = 8,
        max_new_tokens: int = 60,
        batch_size: int = 8,
        **pipeline_kwargs: Any,
    ) -> None:
        if isinstance(model_or_pipeline, str):
            from transformers import pipeline

            try:
                model_or_pipeline = pipeline("image-text-to-text", model=model_or_pipeline, **pipeline_kwargs)
            except Exception as err:  # transformers raises many kinds; say what to do
                raise LabelerError(
                    f"could not load {model_or_pipeline!r} as a transformers image-text-to-text pipeline: {err}. "
                    "Pass a local path, a pipeline, or a model with its processor (offline: HF_HUB_OFFLINE=1)."
                ) from err
        self.model = model_or_pipeline
        self.processor = processor
        self.is_generative_model = hasattr(model_or_pipeline, "generate") and not hasattr(model_or_pipeline, "task")
        if self.is_generative_model and processor is None:
            raise LabelerError("a transformers model needs its processor: TransformersVLMLabeler(model, processor).")
        if not self.is_generative_model and not callable(model_or_pipeline):
            raise LabelerError(
                f"expected a pipeline, a model with generate(), or a model id; got {type(model_or_pipeline).__name__}."
            )
        self.prompt, self.model_prompt = prompt, model_prompt
        self.max_labels, self.max_new_tokens, self.batch_size = int(max_labels), int(max_new_tokens), int(batch_size)

    @staticmethod
    def _text(out: Any) -> str:
        if isinstance(out, list):
            out = out[0] if out else {}
        if isinstance(out, dict):
            gen = out.get("generated_text", "")
            if isinstance(gen, list):  # chat format: the last message is the answer
                last = gen[-1] if gen else {}
                gen = last.get("content", "") if isinstance(last, dict) else str(last)
            return str(gen)
        return str(out)

    def _generate(self, images: list[Any]) -> list[str]:
        import torch

        texts: list[str] = []
        for s in range(0, len(images), self.batch_size):
            batch = [im.convert("RGB") for im in images[s : s + self.batch_size]]
            kwargs: dict[str, Any] = {"images": batch, "return_tensors": "pt"}
            if self.model_prompt:
                kwargs["text"] = [self.model_prompt.format(max_labels=self.max_labels)] * len(batch)
            inputs = self.processor(**kwargs)
            device = getattr(self.model, "device", None)
            if device is not None:
                inputs = inputs.to(device)
            with torch.no_grad():
                ids = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False, num_beams=1)
            if (
                self.model_prompt
                and "input_ids" in inputs
                and ids.shape[1] > inputs["input_ids"].shape[1]
                and bool((ids[:, : inputs["input_ids"].shape[1]] == inputs["input_ids"]).all())
            ):
                ids = ids[:, inputs["input_ids"].shape[1] :]  # decoder-only models echo the prompt
            texts.extend(self.processor.batch_decode(ids, skip_special_tokens=True))
        return texts

    def __call__(self, images: Sequence[Image.Image], embeddings: np.ndarray | None = None) -> list[list[str]]:
        images = list(images)
        if not images:
            return []
        if self.is_generative_model:
            return [_labels_from_answer(t, self.max_labels) for t in self._generate(images)]
        prompt = self.prompt.format(max_labels=self.max_labels)
        labels = []
        for im in images:
            messages = [{"role": "user", "content": [{"type": "image", "image": im}, {"type": "text", "text": prompt}]}]
            out = self.model(text=messages, max_new_tokens=self.max_new_tokens, return_full_text=False)
            labels.append(_labels_from_answer(self._text(out), self.max_labels))
        return labels
