"""The manifest writer can say everything the shipped models' manifests say: each is parsed, turned back into the
writer's spec, rendered and parsed again, and must come out equal table by table. The factory's three builds
write their manifests with this writer (models/factory/zoo.py), so a key it drops or mis-types would change a
shipped model at its next rebuild."""
import glob
import os
import tomllib

import pytest

from bedside_model import manifest

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
SHIPPED = sorted(glob.glob(os.path.join(REPO, "models", "*", "model.toml")) +
                 glob.glob(os.path.join(REPO, "tests", "fixtures", "models", "*", "model.toml")))


def spec_of(t):
    """The writer's spec for a parsed manifest `t`."""
    mod, inp, pre, out = t["model"], t["input"], t["preprocess"], t["output"]
    w = pre["window"]
    m = {k: mod[k] for k in ("id", "version", "task", "file", "sha256", "quantization", "description") if k in mod}
    m.update({k: mod[k] for k in ("parent", "pruned") if k in mod})
    m.update(input_name=inp["name"], input_shape=inp["shape"], frames=inp.get("frames"),
             window=w if w == "dicom" else (w["center"], w["width"]), mean=pre["mean"], std=pre["std"],
             output_name=out["name"], activation=out["activation"], detection=t.get("detection"),
             parity=t.get("parity"), tract_working_bytes=t.get("memory", {}).get("tract_working_bytes"),
             labels=t["labels"])
    return m


def test_every_shipped_manifest_is_found():
    names = {os.path.basename(os.path.dirname(p)) for p in SHIPPED}
    assert {"cxr-tiny-cls", "cxr-tiny-det", "us-fast-fluid"} <= names


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: os.path.basename(os.path.dirname(p)))
def test_a_shipped_manifest_survives_the_writer(path):
    with open(path, "rb") as fh:
        want = tomllib.load(fh)
    got = tomllib.loads(manifest.render(spec_of(want)))
    assert set(got) == set(want)
    for table in want:
        assert got[table] == want[table], table


def test_a_label_code_survives_the_writer():
    with open(SHIPPED[0], "rb") as fh:
        want = tomllib.load(fh)
    want["labels"][0]["code"] = {"value": "36118008", "scheme": "SCT", "meaning": "Pneumothorax \"left\""}
    got = tomllib.loads(manifest.render(spec_of(want)))
    assert got["labels"] == want["labels"]


def test_kept_working_bytes_reads_the_measured_figure(tmp_path):
    p = tmp_path / "model.toml"
    assert manifest.kept_working_bytes(str(p)) is None
    p.write_text('[model]\nid = "x"\n\n[memory]\ntract_working_bytes = 4014400\n')
    assert manifest.kept_working_bytes(str(p)) == 4014400
    p.write_text('[model]\nid = "x"\n')
    assert manifest.kept_working_bytes(str(p)) is None
