"""`datacrafter run`: the whole loop headless on tiny models, a report with escaped text, clear config errors."""

from __future__ import annotations


import pandas as pd
import pytest

from datacrafter_widget.app.cli import main
from datacrafter_widget.app.headless import ConfigError, load_config, prompted_attributes, run
from datacrafter_widget.app.report import Section, reading, render_report


@pytest.fixture(scope="module")
def tiny_models():
    from datacrafter_widget.models.embedder import Embedder
    from datacrafter_widget.models.generator import Generator
    from datacrafter_widget.models.bundle import Models
    from tests.tiny_models import tiny_open_clip, tiny_sd_pipeline

    model, preprocess, tokenizer = tiny_open_clip()
    return Models(
        generator=Generator(tiny_sd_pipeline(), name="tiny-sd", default_steps=2, default_guidance=3.0),
        embedder=Embedder(model, preprocess, tokenizer, name="tiny-clip"),
    )


def fake_checker(images):
    """Says every image shows a pink-on-black 1: all images of other classes are off-prompt."""
    return pd.DataFrame(
        {"digit": ["1"] * len(images), "foreground": ["pink"] * len(images), "background": ["black"] * len(images)}
    )


def test_full_loop_writes_samples_metrics_and_report(tmp_path, tiny_models):
    config = {
        "title": "tiny <run> & test",
        "project": str(tmp_path / "proj"),
        "dataset": {"kind": "starter", "shots": 1, "spurious": 0.9, "seed": 0},
        "rounds": [{"strategy": "class", "per_class": 1}, {"strategy": "caption", "per_class": 1}],
        "feedback": {"simulate": True},
        "evolve": {"enabled": True, "population": 2, "generations": 1, "batch": 1, "per_class": 1},
        "gap": {
            "enabled": True,
            "steps": 2,
            "per_class": 1,
            "sampler_steps": 2,
            "final_steps": 2,
            "batch": 1,
            "n_tokens": 2,
            "target": "a digit on any background",
            "sources": "train",
            "masks": "plain-background",
        },
        "student": {"epochs": 1},
        "export": {"enabled": True},  # default path: beside the project (inside it, export refuses)
    }
    lines = []
    result = run(config, models=tiny_models, checker=fake_checker, progress=False, log=lines.append)
    stages = result.metrics["stage"].tolist()
    assert stages == ["real only", "round 1: class", "round 2: caption", "evolved prompts", "GAP"]
    assert result.metrics["accuracy"].between(0, 1).all()
    assert result.metrics["n_real"].iloc[0] == 10
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
    exported = tmp_path / "proj-export"
    assert (exported / "samples.csv").is_file() and (exported / "train").is_dir()
    assert (result.project / "metrics.csv").is_file() and (result.project / "student" / "student.safetensors").is_file()
    doc = store.read_json("prompts.json", {})
    assert doc["classes"] and all(e["history"] for e in doc["classes"].values())
    html = result.report.read_text()
    assert "tiny &lt;run&gt; &amp; test" in html and "<run>" not in html
    # Offline by construction: charts are SVG images, nothing is fetched, no script runs.
    assert "<script" not in html and "https://" not in html
    assert html.count('src="data:image/svg+xml;base64,') >= 2
    assert "Prompt evolution" in html and "GAP: adversarial prompt tokens" in html and "&lt;gap1&gt;" in html
    assert all(f"<h3>class {c}</h3>" in html for c in "0123456789")
    assert "chance is 10%" in html
    assert result.report == result.report.resolve() and ".." not in result.report.parts
    # Every line is stamped with the seconds since the start, from the first one.
    assert lines[0].startswith("[") and "s] reading the config" in lines[0]
    assert any("test accuracy" in l for l in lines)
    store.close()


def test_report_escapes_text_and_needs_no_script():
    evil = "</script><img src=x onerror=alert(1)>"
    s = Section(evil).text(evil).lines([evil]).table(pd.DataFrame({"prompt": [evil]})).terms({evil: evil})
    s.chart(
        {
            "data": {"values": [{"t": evil, "v": 1}]},
            "mark": "bar",
            "encoding": {"x": {"field": "t", "type": "nominal"}, "y": {"field": "v", "type": "quantitative"}},
        }
    )
    out = render_report(evil, [s], lead=evil, meta={"k": evil})
    assert "<img src=x" not in out and "<script" not in out and "</script>" not in out
    assert out.count('<img class="chart" src="data:image/svg+xml;base64,') == 1


def test_reading_names_chance_change_and_spread():
    table = pd.DataFrame(
        {
            "stage": ["real only", "GAP"],
            "n_real": [50, 50],
            "n_generated_used": [0, 120],
            "accuracy": [0.20, 0.60],
            "n_test": [300, 300],
            "accuracy_min": [0.18, 0.55],
            "accuracy_max": [0.23, 0.62],
            "seeds": [3, 3],
        }
    )
    text = reading(table, 10)
    assert "chance is 10%" in text and "+40.0 points" in text and "larger than the seed spread" in text
    table.loc[1, ["accuracy", "accuracy_min", "accuracy_max"]] = [0.22, 0.19, 0.25]
    assert "within the seed spread" in reading(table, 10)
    one_seed = table.drop(columns=["accuracy_min", "accuracy_max", "seeds"])
    assert "seeds = 3 under [student]" in reading(one_seed, 10)


@pytest.mark.parametrize(
    "config, message",
    [
        (
            {"gap": {"stpes": 10}},
            r"unknown key 'stpes' in \[gap\] \(did you mean 'steps'\?\): the keys of \[gap\] are .*steps",
        ),
        ({"gap": {"per_clas": 5}}, r"unknown key 'per_clas' in \[gap\] \(did you mean 'per_class'\?\)"),
        ({"dataset": {"shots": "five"}}, r"shots in \[dataset\] = 'five' must be a whole number"),
        ({"dataset": {"spurious": "high"}}, r"spurious in \[dataset\] = 'high' must be a number"),
        ({"feedback": {"simulate": "yes"}}, r"simulate in \[feedback\] = 'yes' must be true or false"),
        ({"feedback": {"fewer": ["background"]}}, r"feedback.fewer is part of the simulated person"),
        ({"feedback": {"simulate": True, "fewer": ["sky"]}}, r"fewer in \[feedback\] = .*'background', 'foreground'"),
        (
            {"student": {"kind": "resnet"}},
            r"kind in \[student\] = 'resnet' is not allowed: use one of 'auto', 'cnn', 'probe'",
        ),
        (
            {"rounds": [{"strategy": "class", "per_clas": 3}]},
            r"unknown key 'per_clas' in \[\[rounds\]\] table 1 \(did you mean 'per_class'\?\): the keys of a round are",
        ),
        (
            {"rounds": [{"strategy": "magic"}]},
            r"\[\[rounds\]\] table 1: unknown strategy 'magic': use one of \['class'",
        ),
        ({"rounds": [{"per_class": 3}]}, r"strategy in \[\[rounds\]\] table 1 is missing"),
        (
            {"rounds": [{"strategy": "class"}, {"strategy": "class", "per_class": 0}]},
            r"\[\[rounds\]\] table 2: per_class",
        ),
        ({"datasett": {}}, r"unknown key 'datasett' in the top level \(did you mean 'dataset'\?\)"),
        ({"gap": 3}, r"\[gap\] must be a table"),
        ({"gap": {"sources": "val"}}, r"sources in \[gap\] = 'val' is not allowed: use one of 'none', 'train'"),
        ({"gap": {"masks": "plain-background"}}, r"gap.masks needs gap.sources"),
        ({"dataset": {"kind": "folder"}}, r"needs dataset.path"),
    ],
)
def test_config_errors_name_key_section_and_allowed_values(config, message):
    with pytest.raises(ConfigError, match=message):
        load_config(config)


def test_config_file_errors_and_cli_exit_code(tmp_path, capsys):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text('[[rounds]]\nstrategy = "magic"\n')
    with pytest.raises(ConfigError, match=r"\[\[rounds\]\] table 1: unknown strategy 'magic': use one of"):
        load_config(bad)
    bad.write_text("[gap]\nenabled = true\nstpes = 10\n")
    with pytest.raises(ConfigError, match=r"unknown key 'stpes' in \[gap\]"):
        load_config(bad)
    bad.write_text('[dataset]\nshots = "five"\n')
    assert main(["run", str(bad)]) == 2
    err = capsys.readouterr()
    assert "shots in [dataset] = 'five' must be a whole number" in err.err and "Traceback" not in err.err
    assert "must be a whole number" not in err.out
    bad.write_text("[gap\n")
    with pytest.raises(ConfigError, match="is not valid TOML"):
        load_config(bad)


def test_a_missing_dataset_folder_is_a_config_error_naming_the_key_and_the_path(tmp_path, capsys):
    config = tmp_path / "mine.toml"
    config.write_text('[dataset]\nkind = "folder"\npath = "pets/"\n')
    assert main(["run", str(config)]) == 2
    err = capsys.readouterr().err
    assert f"path in [dataset] = 'pets/': {tmp_path / 'pets'} does not exist" in err
    assert "relative to the config file's folder" in err and "Traceback" not in err
    (tmp_path / "pets").write_text("a file")
    with pytest.raises(ConfigError, match=r"path in \[dataset\] = 'pets/': .* is a file, not a folder"):
        load_config(config)
    (tmp_path / "pets").unlink()
    (tmp_path / "pets" / "cat").mkdir(parents=True)
    config.write_text('[dataset]\nkind = "folder"\npath = "pets"\ntest = "held/out"\n')
    with pytest.raises(ConfigError, match=r"test in \[dataset\] = 'held/out': .*held/out does not exist"):
        load_config(config)
    config.write_text('[dataset]\npath = "pets"\n')
    with pytest.raises(ConfigError, match=r"path in \[dataset\] is set, but kind = 'starter'.*kind = 'folder'"):
        load_config(config)


def test_a_dataset_folder_that_cannot_be_read_is_a_config_error_not_a_traceback(tmp_path, capsys):
    (tmp_path / "pets" / "cat").mkdir(parents=True)  # a class folder without images
    config = tmp_path / "mine.toml"
    config.write_text('[dataset]\nkind = "folder"\npath = "pets"\n')
    assert main(["run", str(config), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "path in [dataset] = 'pets': class folder(s) ['cat']" in err and "Traceback" not in err


def test_simulated_feedback_on_your_own_data_says_what_to_change():
    with pytest.raises(
        ConfigError, match=r"simulate in \[feedback\] = true needs dataset.kind = 'starter'.*simulate = false"
    ):
        load_config({"dataset": {"kind": "folder", "path": "."}, "feedback": {"simulate": True}})


def test_the_folder_example_config_is_valid_once_its_folder_exists(tmp_path):
    from pathlib import Path

    text = (Path(__file__).resolve().parent.parent / "examples" / "folder.toml").read_text()
    (tmp_path / "my_images").mkdir()
    (tmp_path / "folder.toml").write_text(text)
    cfg = load_config(tmp_path / "folder.toml")
    assert cfg["dataset"]["kind"] == "folder" and not cfg["feedback"]["simulate"]


def test_a_second_run_into_the_same_project_needs_overwrite(tmp_path):
    from datacrafter_widget.app.headless import _fresh_project

    proj = tmp_path / "p"
    _fresh_project(proj, overwrite=False)  # nothing there: fine
    proj.mkdir()
    (proj / "project.json").write_text("{}")
    with pytest.raises(ConfigError, match="--overwrite"):
        _fresh_project(proj, overwrite=False)
    _fresh_project(proj, overwrite=True)
    assert not proj.exists()
    other = tmp_path / "mine"
    other.mkdir()
    (other / "thesis.tex").write_text("x")
    with pytest.raises(ConfigError, match="not a datacrafter project"):
        _fresh_project(other, overwrite=True)
    assert (other / "thesis.tex").is_file()


def test_prompted_attributes_reads_the_starter_grammar():
    assert prompted_attributes("a thick red 3 on a pink background, slanted left", "3") == {
        "digit": "3",
        "foreground": "red",
        "background": "pink",
    }
    assert prompted_attributes("a photo of a 3", "3") == {"digit": "3", "foreground": None, "background": None}


def test_example_config_is_valid():
    from pathlib import Path

    cfg = load_config(Path(__file__).resolve().parent.parent / "examples" / "starter.toml")
    assert cfg["models"]["kind"] == "starter" and cfg["rounds"]


def test_the_checker_ships_trained_and_reads_real_renders():
    """datacrafter run starts at once: the independent checker's weights are in the package (float16, small)."""
    from datacrafter_widget.starter import colored_digits
    from datacrafter_widget.starter.checker import WEIGHTS, load_checker

    assert WEIGHTS.is_file() and WEIGHTS.stat().st_size < 400_000
    checker = load_checker()
    test = colored_digits(shots=1, seed=0).test
    frame = test.frame.head(100)
    found = checker.predict(test.images(list(range(100))))
    assert sum(a == b for a, b in zip(found["digit"], frame["label"].astype(str))) >= 80
    assert checker.heldout_accuracy["digit"] > 0.8 and checker.settings["steps"] > 0


def test_simulated_fewer_lassoes_each_value_beyond_an_even_share_in_its_own_lasso():
    """60 black, 20 gray, 10 white, 10 pink of 100: one wordless lasso each for the black and gray
    excess (even share 20), nothing for the rest; images already marked are left alone."""
    from datacrafter_widget.app.headless import simulated_fewer

    ids = [f"g{k:03d}" for k in range(100)]
    bgs = ["black"] * 60 + ["gray"] * 21 + ["white"] * 9 + ["pink"] * 10
    marked = {"g099"}  # a pink image already marked bad: neither read nor lassoed again

    class Crafter:
        samples = pd.DataFrame({"id": ids, "feedback": ["bad" if i in marked else "" for i in ids]})
        calls: list[dict] = []

        def image(self, i):
            return i

        def feedback(self, **kw):
            self.calls.append(kw)

    def checker(images):
        return pd.DataFrame({"background": [bgs[ids.index(i)] for i in images], "foreground": ["red"] * len(images)})

    crafter = Crafter()
    n = simulated_fewer(crafter, ids, checker, ["background"])
    even = 99 // 5
    assert [len(c["bad"]) for c in crafter.calls] == [60 - even, 21 - even]
    assert all(set(bgs[ids.index(i)] for i in c["bad"]) == {b} for c, b in zip(crafter.calls, ["black", "gray"]))
    assert all("bad_labels" not in c for c in crafter.calls) and n == 60 + 21 - 2 * even


def test_a_silent_step_says_it_is_still_working(tmp_path, monkeypatch):
    """While models load (or any step prints nothing), `datacrafter run` says "still ..." every QUIET_S seconds."""
    import threading

    from datacrafter_widget.app import headless

    monkeypatch.setattr(headless, "QUIET_S", 0.05, raising=False)
    lines: list[str] = []
    loading = threading.Event()

    def slow_models(*args):
        loading.wait(1.0)  # a silent load: nothing sets the event
        raise RuntimeError("stop here")

    monkeypatch.setattr(headless, "_models", slow_models)
    cfg = tmp_path / "run.toml"
    cfg.write_text('project = "p"\n[feedback]\nsimulate = false\n')
    with pytest.raises(RuntimeError, match="stop here"):
        run(cfg, log=lines.append, progress=False)
    loading_at = next(k for k, line in enumerate(lines) if "loading the starter models" in line)
    still = [line for line in lines[loading_at + 1 :] if "... still loading the starter models" in line]
    assert len(still) >= 3, lines


def test_loading_the_starter_models_says_each_stage():
    from datacrafter_widget.app.headless import _models
    from datacrafter_widget.starter.loader import LOAD_STAGES

    lines: list[str] = []
    models = _models({"models": {"kind": "starter"}}, lines.append)
    assert models.generator is not None
    assert lines == [
        f"loading the starter models: {what} ({k}/{len(LOAD_STAGES)})" for k, what in enumerate([*LOAD_STAGES, "done"])
    ]
