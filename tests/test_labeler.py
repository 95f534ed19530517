"""Content labelers: calibrated CLIP vocabulary labels, VLM and OpenAI-compatible backends."""

from __future__ import annotations

import base64
import io
import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from datacrafter_widget.loop.content_labels import (
    ClipVocabularyLabeler,
    Labeler,
    LabelerError,
    OpenAICompatibleLabeler,
    TransformersVLMLabeler,
    Vocabulary,
    build_vocabulary,
    caption_terms,
    parse_labels,
)

# ----------------------------------------------------------------------------- a fake embedder
# Concepts get orthogonal directions; a text embeds to the direction of the concept it names, so
# which labels come out of the calibration is known exactly.

CLASSES = ["cat", "dog", "bird", "fish"]
COLOURS = ["red", "green", "blue", "yellow"]
HUB = "thing"  # a word close to every image (raw cosine would give it to all)


class ConceptEmbedder:
    def __init__(self, concepts):
        self.concepts = list(concepts)
        self.dim = len(self.concepts) + 8
        self.logit_scale = 100.0
        self.templates = ("a photo of a {}",)
        self.text_calls = 0

    def vec(self, concept):
        v = np.zeros(self.dim, dtype=np.float32)
        v[self.concepts.index(concept)] = 1.0
        return v

    def embed_texts(self, texts):
        self.text_calls += 1
        out = []
        for t in texts:
            hits = [c for c in self.concepts if c in t.split() or t.endswith(c)]
            v = self.vec(hits[0]) if hits else np.ones(self.dim, dtype=np.float32)
            out.append(v / np.linalg.norm(v))
        return np.stack(out)

    def embed_images(self, images):
        raise AssertionError("the tests pass embeddings")


def population(emb: ConceptEmbedder, n_each: int = 5, seed: int = 0, noise: float = 0.0):
    rng = np.random.default_rng(seed)
    rows, truth = [], []
    for c in CLASSES:
        for k in COLOURS:
            for _ in range(n_each):
                v = emb.vec(c) + 0.8 * emb.vec(k) + 1.5 * emb.vec(HUB) + rng.normal(scale=noise, size=emb.dim)
                rows.append(v / np.linalg.norm(v))
                truth.append({c, k})
    return np.stack(rows).astype(np.float32), truth


@pytest.fixture()
def fake():
    return ConceptEmbedder(CLASSES + COLOURS + [HUB])


def vocab():
    v = Vocabulary()
    for c in CLASSES:
        v.add(c, "class")
    for k in COLOURS:
        v.add(k, "colour")
    v.add(HUB, "caption")
    return v


def test_calibrated_labels_are_exactly_class_and_colour(fake):
    e, truth = population(fake)
    lab = ClipVocabularyLabeler(fake, vocab())
    out = lab(None, embeddings=e)
    assert [set(x) for x in out] == truth
    assert isinstance(lab, Labeler)


def test_calibrated_labels_with_noise_mostly_exact(fake):
    e, truth = population(fake, noise=0.05)
    out = ClipVocabularyLabeler(fake, vocab())(None, embeddings=e)
    assert all(t <= set(x) for x, t in zip(out, truth))  # class and colour always named
    assert np.mean([set(x) == t for x, t in zip(out, truth)]) > 0.9  # the hub word only rarely


def test_two_classes_still_named(fake):
    """With two equally common classes a member's z is only 1.0: the group rule names it."""
    rng = np.random.default_rng(1)
    rows = [fake.vec(c) + fake.vec(HUB) + rng.normal(scale=0.02, size=fake.dim) for c in ["cat", "dog"] * 20]
    v = Vocabulary(["cat", "dog"], ["class", "class"])
    out = ClipVocabularyLabeler(fake, v)(None, embeddings=np.stack(rows))
    assert out == [["cat"], ["dog"]] * 20


def test_common_attribute_named_through_its_bimodal_scores(fake):
    """Half the images are red: z on them is only ~1, but the scores split in two clear modes."""
    rng = np.random.default_rng(2)
    rows = []
    for i in range(60):
        v = fake.vec(CLASSES[i % 4]) + (0.8 * fake.vec("red") if i % 2 else 0) + fake.vec(HUB)
        rows.append(v + rng.normal(scale=0.02, size=fake.dim))
    e = np.stack(rows)
    lab = ClipVocabularyLabeler(fake, vocab())
    out = lab(None, embeddings=e)
    assert [("red" in x) for x in out] == [bool(i % 2) for i in range(60)]
    assert all(CLASSES[i % 4] in x for i, x in enumerate(out))
    strict = ClipVocabularyLabeler(fake, vocab(), separation=None)(None, embeddings=e)
    assert not any("red" in x for x in strict)  # z alone (>= 3) would never name it


def test_raw_cosine_would_label_every_image_with_the_hub_word(fake):
    e, _ = population(fake)
    raw = ClipVocabularyLabeler(fake, vocab(), threshold=0.5)(None, embeddings=e)
    assert all(HUB in x for x in raw)
    calibrated = ClipVocabularyLabeler(fake, vocab())(None, embeddings=e)
    assert not any(HUB in x for x in calibrated)


def test_group_caps_top_k_and_min_labels(fake):
    e, _ = population(fake)
    # an image that is cat and dog at once still gets one class name (class cap 1)
    both = fake.vec("cat") + fake.vec("dog") + 1.5 * fake.vec(HUB)
    lab = ClipVocabularyLabeler(fake, vocab()).calibrate(e)
    out = lab(None, embeddings=np.stack([both / np.linalg.norm(both)]))[0]
    assert sum(w in CLASSES for w in out) == 1
    # an image like the average image has nothing distinctive: it still gets min_labels=1 label
    plain = e.mean(0, keepdims=True)
    assert len(lab(None, embeddings=plain)[0]) == 1
    assert lab.select(np.full((1, len(lab.vocabulary)), 9.0), "z") == [["cat", "red", "green", "thing"]]
    capped = ClipVocabularyLabeler(fake, vocab(), top_k=1).calibrate(e)
    assert all(len(x) == 1 for x in capped(None, embeddings=e))


def test_small_batch_uses_reference_calibration_or_relative_rule(fake):
    e, truth = population(fake)
    few = e[[0, 27, 55]]
    lab = ClipVocabularyLabeler(fake, vocab())
    # 3 images, no reference: relative (softmax within group) rule still names class and colour
    rel = lab(None, embeddings=few)
    assert [set(x) - {HUB} for x in rel] == [truth[0], truth[27], truth[55]]
    lab.calibrate(e)
    assert [set(x) for x in lab(None, embeddings=few)] == [truth[0], truth[27], truth[55]]
    # text embeddings are computed once and cached
    calls = fake.text_calls
    lab(None, embeddings=few)
    assert fake.text_calls == calls


def test_vocabulary_from_classes_captions_attributes_and_user_words():
    caps = [
        "a thick red 3 on a black background, slanted left",
        "a red 5 on a black background",
        "a thin blue 3 on a white background, slanted left",
        "a blue 5 on a white background",
    ]
    terms = caption_terms(caps, exclude=["3", "5"])
    assert "black background" in terms and "slanted left" in terms and "red" in terms
    assert not {"a", "on", "3", "background slanted"} & set(terms)
    # "background" is in every caption (separates nothing); "left" only ever inside "slanted left";
    # "thick red" is two independent attributes side by side, not a collocation
    assert not {"background", "left", "thick red"} & set(terms)
    v = build_vocabulary(["3", "5"], caps, extra_words=["sparkly"])
    g = dict(zip(v.words, v.groups))
    assert g["3"] == "class" and g["sparkly"] == "user"
    assert g["red"] == "colour" and g["black background"] == "background" and g["slanted left"] == "caption"
    assert "striped" in g and "cartoon" in g  # default visual attributes
    assert len(v.words) == len({w.lower() for w in v.words})


def test_bad_input(fake):
    with pytest.raises(LabelerError, match="threshold"):
        ClipVocabularyLabeler(fake, vocab(), threshold="maybe")
    with pytest.raises(LabelerError, match="empty"):
        ClipVocabularyLabeler(fake, [])
    lab = ClipVocabularyLabeler(fake, vocab())
    with pytest.raises(LabelerError, match="NaN"):
        lab(None, embeddings=np.full((2, fake.dim), np.nan))
    with pytest.raises(LabelerError, match="same CLIP model"):
        lab(None, embeddings=np.ones((2, 3)))
    with pytest.raises(LabelerError, match="one embedding per image"):
        lab([Image.new("RGB", (4, 4))] * 3, embeddings=np.ones((2, fake.dim)))
    assert lab([], None) == []


# ----------------------------------------------------------------------------- real open_clip


@pytest.fixture(scope="module")
def tiny_embedder():
    from datacrafter_widget.models.embedder import Embedder
    from tests.tiny_models import tiny_open_clip

    model, preprocess, tokenizer = tiny_open_clip(seed=0)
    return Embedder(model, preprocess, tokenizer, name="tiny-random-clip")


def coloured_squares(n: int = 24):
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, size=(32, 32, 3), dtype=np.uint8)) for _ in range(n)]


def test_clip_labeler_with_random_open_clip_model(tiny_embedder):
    images = coloured_squares()
    lab = ClipVocabularyLabeler(
        tiny_embedder, class_names=["cat", "dog"], captions=["a red cat on grass"] * 3, extra_words=["sparkly"]
    )
    out = lab(images)
    assert len(out) == len(images)
    vocab_words = set(lab.vocabulary.words)
    assert all(1 <= len(x) <= lab.top_k and set(x) <= vocab_words for x in out)
    assert all(sum(w in ("cat", "dog") for w in x) <= 1 for x in out)
    emb = tiny_embedder.embed_images(images)
    assert lab(images, embeddings=emb) == out  # same labels from cached embeddings
    assert lab(images) == out  # deterministic


# ----------------------------------------------------------------------------- starter CLIP

WEIGHTS = Path(__file__).resolve().parents[1] / "datacrafter_widget" / "starter" / "weights"


@pytest.fixture(scope="module")
def starter_labels():
    """Labels for the starter test split from the shipped starter CLIP (calibrated on pool images,
    vocabulary from the pool captions), with the truth table. Skips while the weights are absent."""
    import datacrafter_widget as dc

    if not hasattr(dc.starter, "models") or not (WEIGHTS / "clip.safetensors").is_file():
        pytest.skip("starter weights are not built yet (python -m datacrafter_widget.starter.train)")
    ds = dc.starter.colored_digits(shots=5, seed=0)
    models = dc.starter.models()
    frame = ds.test.to_dataframe()
    images = ds.test.images()
    emb = models.embedder.embed_images(images)
    pool = ds.pool
    lab = ClipVocabularyLabeler(models.embedder, class_names=ds.classes, captions=[c for c in pool.captions if c])
    ref = np.random.default_rng(0).choice(len(pool), size=min(600, len(pool)), replace=False)
    lab.calibrate(models.embedder.embed_images(pool.images(ref.tolist())))
    return lab(images, embeddings=emb), frame


@pytest.mark.slow
def test_labels_on_starter_images_name_the_colours(starter_labels):
    """Labels on starter images name the foreground and background colours most of the time."""
    from datacrafter_widget.starter.digits import FOREGROUNDS

    out, frame = starter_labels
    fg = np.mean([any(f in w.split() for w in x) for f, x in zip(frame["foreground"], out)])
    bg = np.mean([any(b in w.split() for w in x) for b, x in zip(frame["background"], out)])
    wrong_fg = np.mean([any(w in FOREGROUNDS and w != f for w in x) for f, x in zip(frame["foreground"], out)])
    print(
        f"starter labels: foreground {fg:.2f}, background {bg:.2f}, wrong foreground {wrong_fg:.2f}; "
        f"e.g. {list(zip(frame['caption'][:3], out[:3]))}"
    )
    assert fg > 0.8 and bg > 0.6 and wrong_fg < 0.2


@pytest.mark.slow
def test_labels_on_starter_images_name_the_right_digit(starter_labels):
    """Labels name the digit most of the time -- as far as the starter CLIP can tell digits apart."""
    out, frame = starter_labels
    digit = np.mean([str(d) in x for d, x in zip(frame["label"], out)])
    info = json.loads((WEIGHTS / "training.json").read_text()) if (WEIGHTS / "training.json").is_file() else {}
    clip_digit = info.get("clip_zero_shot_heldout_scans", {}).get("digit", 1.0)
    print(f"starter labels: digit {digit:.2f} (the starter CLIP's own zero-shot digit accuracy: {clip_digit})")
    if clip_digit < 0.5 and digit <= 0.6:
        pytest.xfail(
            f"the shipped starter CLIP classifies digits at {clip_digit:.2f} zero-shot (chance 0.10); "
            f"labels name the digit for {digit:.2f} of images"
        )
    assert digit > 0.6


# ----------------------------------------------------------------------------- VLM labelers


def test_parse_labels_formats():
    assert parse_labels('["Red", "a Cat", "red"]') == ["red", "a cat"]
    assert parse_labels('```json\n{"labels": ["blurry", "dog"]}\n```') == ["blurry", "dog"]
    assert parse_labels("Labels: red, striped, outdoors.") == ["red", "striped", "outdoors"]
    assert parse_labels("- red\n- blue background\n3. cartoon") == ["red", "blue background", "cartoon"]
    assert parse_labels("a, b, c, d", max_labels=2) == ["a", "b"]
    assert parse_labels("") == []


class _FakeOpenAI(BaseHTTPRequestHandler):
    requests: list = []
    answer = '["red", "digit", "black background"]'

    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append((self.path, dict(self.headers), body))
        if self.headers.get("Authorization") != "Bearer sk-test":
            self.send_response(401)
            self.end_headers()
            self.wfile.write(b'{"error": "bad key"}')
            return
        reply = {"choices": [{"message": {"role": "assistant", "content": type(self).answer}}]}
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture()
def fake_server():
    _FakeOpenAI.requests = []
    server = HTTPServer(("127.0.0.1", 0), _FakeOpenAI)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_openai_compatible_labeler_against_local_server(fake_server):
    lab = OpenAICompatibleLabeler(fake_server + "/v1", model="tiny-vlm", api_key="sk-test")
    images = [Image.new("RGB", (20, 10), (200, 0, 0)), Image.new("L", (8, 8), 30)]
    out = lab(images)
    assert out == [["red", "digit", "black background"]] * 2
    assert isinstance(lab, Labeler)
    path, headers, body = _FakeOpenAI.requests[0]
    assert path == "/v1/chat/completions"
    assert body["model"] == "tiny-vlm"
    parts = body["messages"][0]["content"]
    url = next(p["image_url"]["url"] for p in parts if p["type"] == "image_url")
    assert url.startswith("data:image/png;base64,")
    sent = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert sent.format == "PNG" and sent.size == (20, 10) and sent.getpixel((0, 0)) == (200, 0, 0)
    assert any(p["type"] == "text" and "labels" in p["text"] for p in parts)
    assert "sk-test" not in repr(lab)
    # plain text answers are parsed too
    _FakeOpenAI.answer = "Labels: striped, Outdoors"
    try:
        assert lab(images[:1]) == [["striped", "outdoors"]]
    finally:
        _FakeOpenAI.answer = '["red", "digit", "black background"]'


def test_openai_compatible_labeler_errors(fake_server):
    with pytest.raises(LabelerError, match="HTTP 401"):
        OpenAICompatibleLabeler(fake_server, model="m", api_key="wrong")([Image.new("RGB", (4, 4))])
    assert _FakeOpenAI.requests[-1][0] == "/v1/chat/completions"  # base URL without /v1 works too
    with pytest.raises(LabelerError, match="could not reach"):
        OpenAICompatibleLabeler("http://127.0.0.1:9/v1", model="m", timeout=2)([Image.new("RGB", (4, 4))])
    with pytest.raises(LabelerError, match="http"):
        OpenAICompatibleLabeler("localhost:8000", model="m")


def test_transformers_vlm_labeler_with_tiny_blip():
    from tests.tiny_models import BLIP_WORDS, tiny_blip

    model, processor = tiny_blip(seed=0)
    lab = TransformersVLMLabeler(model, processor, max_new_tokens=8, max_labels=5)
    images = coloured_squares(3)
    out = lab(images)
    assert len(out) == 3
    assert all(isinstance(x, list) and len(x) <= 5 for x in out)
    assert all(set(x) <= set(BLIP_WORDS) for x in out)  # words from the model's vocabulary only
    assert lab(images) == out
    with pytest.raises(LabelerError, match="processor"):
        TransformersVLMLabeler(model)


def test_transformers_vlm_labeler_chat_pipeline_protocol():
    """Any image-text-to-text pipeline: called with chat messages, answers in pipeline format."""
    seen = []

    class ChatPipeline:
        task = "image-text-to-text"

        def __call__(self, text, max_new_tokens, return_full_text):
            seen.append(text)
            return [{"generated_text": [{"role": "assistant", "content": "red, cat, grass background"}]}]

    lab = TransformersVLMLabeler(ChatPipeline())
    img = Image.new("RGB", (8, 8))
    assert lab([img, img]) == [["red", "cat", "grass background"]] * 2
    content = seen[0][0]["content"]
    assert content[0] == {"type": "image", "image": img} and content[1]["type"] == "text"
