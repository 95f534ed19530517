"""`datacrafter run`: the whole loop headless on tiny models, a report with escaped text, clear config errors."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from datacrafter_widget.app.cli import main
from datacrafter_widget.app.headless import ConfigError, load_config, prompted_attributes, run
from datacrafter_widget.app.report import Section, render_report


@pytest.fixture(scope="module")
def tiny_models():
    from datacrafter_widget.models.embedder import Embedder
    from datacrafter_widget.models.generator import Generator
    from datacrafter_widget.models.bundle import Models
    from tests.tiny_models import tiny_open_clip, tiny_sd_pipeline

    model, preprocess, tokenizer = tiny_open_clip()
    return Models(generator=Generator(tiny_sd_pipeline(), name="tiny-sd", default_steps=2, default_guidance=3.0),
                  embedder=Embedder(model, preprocess, tokenizer, name="tiny-clip"))


def fake_checker(images):
    """Says every image shows a pink-on-black 1: all images of other classes are off-prompt."""
    return pd.DataFrame({"digit": ["1"] * len(images), "foreground": ["pink"] * len(images),
                         "background": ["black"] * len(images)})


def test_full_loop_writes_samples_metrics_and_report(tmp_path, tiny_models):
    config = {
        "title": "tiny <run> & test",
        "project": str(tmp_path / "proj"),
        "dataset": {"kind": "starter", "shots": 1, "spurious": 0.9, "seed": 0},
        "rounds": [{"strategy": "class", "per_class": 1}, {"strategy": "caption", "per_class": 1}],
        "feedback": {"simulate": True},
        "evolve": {"enabled": True, "population": 2, "generations": 1, "batch": 1, "per_class": 1},
        "gap": {"enabled": True, "steps": 2, "per_class": 1, "sampler_steps": 2, "final_steps": 2, "batch": 1,
                "n_tokens": 2, "target": "a digit on any background", "sources": "train", "masks": "plain-background"},
        "student": {"epochs": 1},
    }
    lines = []
    result = run(config, models=tiny_models, checker=fake_checker, progress=False, log=lines.append)
    stages = result.metrics["stage"].tolist()
    assert stages == ["real only", "round 1: class", "round 2: caption", "evolved prompts", "GAP"]
    assert result.metrics["accuracy"].between(0, 1).all()
    assert result.metrics["n_train"].iloc[0] == 10
    from datacrafter_widget.data.store import SampleStore

    store = SampleStore(result.project, readonly=True)
    s = store.samples
    gen = s[s["source"] == "generated"]
    assert set(gen["strategy"]) == {"class", "caption", "evolved", "gap"}
    # The fake checker sees a "1" everywhere: every generated image of another class is marked bad.
    checked = gen[gen["strategy"] != "gap"]
    assert (checked[checked["label"] != "1"]["feedback"] == "bad").all()
    # GAP started from each class's real train image and kept its object (provenance names both).
    gap = gen[gen["strategy"] == "gap"]
    real_train = s[(s["source"] == "real") & (s["split"] == "train")].set_index("id")
    assert len(gap) == 10 and gap["parent_id"].isin(real_train.index).all()
    assert (real_train.loc[gap["parent_id"], "label"].values == gap["label"].values).all()
    assert gap["mask_file"].str.startswith("gap/masks/").all() and (gap["strength"] > 0).all()
    assert (result.project / "metrics.csv").is_file() and (result.project / "student" / "student.safetensors").is_file()
    doc = store.read_json("prompts.json", {})
    assert doc["classes"] and all(e["history"] for e in doc["classes"].values())
    html = result.report.read_text()
    assert "tiny &lt;run&gt; &amp; test" in html and "<run>" not in html
    assert 'id="vega-specs"' in html and "Prompt evolution" in html and "GAP optimisation" in html
    assert any("test accuracy" in l for l in lines)
    store.close()


def test_report_escapes_text_and_script_json():
    evil = "</script><img src=x onerror=alert(1)>"
    s = Section(evil).text(evil).lines([evil]).table(pd.DataFrame({"prompt": [evil]}))
    s.chart({"data": {"values": [{"t": evil}]}, "mark": "point"})
    out = render_report(evil, [s], meta={"k": evil})
    assert "<img src=x" not in out and out.count("</script>") == out.count("<script")
    specs = out.split('id="vega-specs">')[1].split("</script>")[0]
    assert json.loads(specs)["chart0"]["data"]["values"][0]["t"] == evil


def test_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text('[[rounds]]\nstrategy = "magic"\n')
    with pytest.raises(ConfigError, match="unknown: use one of"):
        load_config(bad)
    bad.write_text('datasett = 1\n')
    with pytest.raises(ConfigError, match="unknown config key"):
        load_config(bad)
    with pytest.raises(ConfigError, match="needs dataset.path"):
        load_config({"dataset": {"kind": "folder"}})
    assert main(["run", str(tmp_path / "nope.toml")]) == 2
    with pytest.raises(ConfigError, match="gap.sources 'val' is unknown"):
        load_config({"gap": {"sources": "val"}})
    with pytest.raises(ConfigError, match="gap.masks needs gap.sources"):
        load_config({"gap": {"masks": "plain-background"}})


def test_prompted_attributes_reads_the_starter_grammar():
    assert prompted_attributes("a thick red 3 on a pink background, slanted left", "3") == \
        {"digit": "3", "foreground": "red", "background": "pink"}
    assert prompted_attributes("a photo of a 3", "3") == {"digit": "3", "foreground": None, "background": None}


def test_example_config_is_valid():
    from pathlib import Path

    cfg = load_config(Path(__file__).resolve().parent.parent / "examples" / "starter.toml")
    assert cfg["models"]["kind"] == "starter" and cfg["rounds"]
