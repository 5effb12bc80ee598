"""bedside-model end to end on a tiny CNN made here, against the real bedside binary ($BEDSIDE)."""
import hashlib
import json
import os
import subprocess
import tomllib

import onnx
import pytest
from conftest import common_args, run_tool

from bedside_model import manifest


def sha(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def ok(built):
    p = built["proc"]
    assert p.returncode == 0, f"build failed ({p.returncode}):\n{p.stdout}\n{p.stderr}"
    return built["out"]


def test_the_full_build_succeeds_and_writes_the_folder(built):
    out = ok(built)
    for f in ("model.onnx", "model.fp32.onnx", "model.toml", "MODEL_CARD.md", "fixtures/parity.json",
              "eval/summary.json", "eval/report.md"):
        assert os.path.exists(os.path.join(out, f)), f
    assert not os.path.exists(os.path.join(out, "REJECTED.txt"))


def test_the_manifest_names_the_files_by_sha256(built, data):
    out = ok(built)
    m = tomllib.load(open(os.path.join(out, "model.toml"), "rb"))
    assert m["model"]["file"] == "model.onnx"
    assert m["model"]["sha256"] == sha(os.path.join(out, "model.onnx"))
    assert m["model"]["parent"] == {"file": "model.fp32.onnx", "sha256": sha(os.path.join(out, "model.fp32.onnx"))}
    # the parent is the source, byte for byte
    assert m["model"]["parent"]["sha256"] == sha(data["onnx"])
    assert m["input"] == {"name": "input", "shape": [1, 1, 64, 64], "layout": "NCHW"}
    assert m["output"] == {"name": "logits", "activation": "softmax"}
    assert [(l["name"], l["threshold"]) for l in m["labels"]] == [("normal", 0.5), ("effusion", 0.3), ("other", 0.3)]
    assert m["preprocess"] == {"window": "dicom", "resize": "bilinear-antialias", "mean": 0.4, "std": 0.25}
    assert m["parity"]["max_abs"] >= 1e-5 and m["parity"]["fp32_max_abs"] >= 1e-5
    assert "per-tensor" in m["model"]["quantization"] and "16 images" in m["model"]["quantization"]
    # [memory] as bedside measures it, byte for byte
    out = subprocess.run([built["bedside"], "models", "measure", out], capture_output=True, text=True, check=True)
    assert f"tract_working_bytes = {m['memory']['tract_working_bytes']}" in out.stdout


def test_every_conv_became_a_qlinearconv(built):
    out = ok(built)
    ops = [n.op_type for n in onnx.load(os.path.join(out, "model.onnx")).graph.node]
    assert "Conv" not in ops and ops.count("QLinearConv") == 3, ops


def test_bedside_loads_the_folder_and_parity_passes(built, bedside_bin):
    out = ok(built)
    p = subprocess.run([bedside_bin, "parity", "--model", out, "--fixtures", os.path.join(out, "fixtures")],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr
    lines = p.stdout.strip().splitlines()
    assert len(lines) == 2 and all(l.endswith(": ok") for l in lines), lines
    doc = json.load(open(os.path.join(out, "fixtures", "parity.json")))
    assert len(doc["cases"]) == 6 and {"int8", "fp32"} <= set(doc["cases"][0])


def test_bedside_eval_runs_on_the_folder(built, bedside_bin, data, tmp_path):
    out = ok(built)
    p = subprocess.run([bedside_bin, "eval", "--model", out, "--data", data["eval"], "--compare", "parent",
                        "--out", str(tmp_path)], capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr
    s = json.load(open(tmp_path / "summary.json"))
    assert [r["file"] for r in s["runs"]] == ["model.onnx", "model.fp32.onnx"]
    assert s["runs"][0]["images"] == 12 and s["runs"][0]["skipped"] == 0


def test_the_card_says_what_was_measured_and_what_a_human_must_fill(built):
    out = ok(built)
    card = open(os.path.join(out, "MODEL_CARD.md")).read()
    assert "not a diagnosis" in card
    for section in ("## Intended use", "## Training data", "## Limitations"):
        assert section in card
    assert card.count("TO FILL IN") >= 3
    m = tomllib.load(open(os.path.join(out, "model.toml"), "rb"))
    assert m["model"]["sha256"] in card and m["model"]["parent"]["sha256"] in card
    assert "16 tensors" in card and "mean AUC" in card


def test_a_dynamic_input_shape_is_refused_with_its_name_and_shape(data, bedside_bin, tmp_path):
    out = str(tmp_path / "dyn")
    p = run_tool(common_args(data["dynamic"], out, data["calib"]), bedside_bin)
    assert p.returncode == 2, p.stdout + p.stderr
    assert "input 'input'" in p.stderr and "height" in p.stderr and "--input-shape" in p.stderr, p.stderr
    assert not os.path.exists(os.path.join(out, "model.onnx"))


def test_a_dynamic_input_shape_is_fixed_by_input_shape(data, bedside_bin, tmp_path):
    out = str(tmp_path / "dyn-fixed")
    p = run_tool(common_args(data["dynamic"], out, data["calib"], ["--input-shape", "1,1,64,64", "--no-bench"]),
                 bedside_bin)
    assert p.returncode == 0, p.stdout + p.stderr
    m = tomllib.load(open(os.path.join(out, "model.toml"), "rb"))
    assert m["input"]["shape"] == [1, 1, 64, 64]
    assert m["model"]["parent"]["sha256"] == sha(os.path.join(out, "model.fp32.onnx"))


def test_an_impossible_eval_margin_is_refused_and_rejected_txt_written(data, bedside_bin, tmp_path):
    out = str(tmp_path / "gate")
    p = run_tool(common_args(data["onnx"], out, data["calib"],
                             ["--eval-data", data["eval"], "--max-drop", "-1", "--no-bench"]), bedside_bin)
    assert p.returncode == 3, p.stdout + p.stderr
    assert "eval gate" in p.stderr and "below" in p.stderr, p.stderr
    rejected = open(os.path.join(out, "REJECTED.txt")).read()
    assert "eval gate" in rejected and "below" in rejected
    assert os.path.exists(os.path.join(out, "eval", "summary.json"))  # left for a look
    assert not os.path.exists(os.path.join(out, "MODEL_CARD.md"))


def test_a_calibration_folder_without_images_is_refused(data, bedside_bin, tmp_path):
    out = str(tmp_path / "nocalib")
    p = run_tool(common_args(data["onnx"], out, data["empty"]), bedside_bin)
    assert p.returncode == 2, p.stdout + p.stderr
    assert "no calibration image" in p.stderr, p.stderr
    assert not os.path.exists(os.path.join(out, "model.onnx"))
    assert os.path.exists(os.path.join(out, "REJECTED.txt"))


def test_unreadable_calibration_images_are_skipped_with_a_warning(data, bedside_bin, tmp_path):
    calib = tmp_path / "calib"
    calib.mkdir()
    for f in sorted(os.listdir(data["calib"]))[:5]:
        (calib / f).write_bytes(open(os.path.join(data["calib"], f), "rb").read())
    (calib / "broken.dcm").write_bytes(b"not a dicom file")
    out = str(tmp_path / "skip")
    p = run_tool(common_args(data["onnx"], out, str(calib), ["--no-bench"]), bedside_bin)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "1 of 6 calibration images could not be prepared" in p.stderr, p.stderr
    assert "5 images" in tomllib.load(open(os.path.join(out, "model.toml"), "rb"))["model"]["quantization"]


def test_labels_that_do_not_fit_the_output_are_refused(data, bedside_bin, tmp_path):
    args = common_args(data["onnx"], str(tmp_path / "labels"), data["calib"])
    args[args.index("--labels") + 1] = "a,b"
    args[args.index("--thresholds") + 1] = "0.5"
    p = run_tool(args, bedside_bin)
    assert p.returncode == 2 and "[1, 3]" in p.stderr and "['a', 'b']" in p.stderr, p.stderr


def test_an_existing_model_folder_is_not_overwritten_without_force(built, data, bedside_bin):
    out = ok(built)
    before = sha(os.path.join(out, "model.toml"))
    p = run_tool(common_args(data["onnx"], out, data["calib"]), bedside_bin)
    assert p.returncode == 2 and "--force" in p.stderr
    assert sha(os.path.join(out, "model.toml")) == before and not os.path.exists(os.path.join(out, "REJECTED.txt"))


@pytest.mark.parametrize("measured,want", [(0.0, 1e-5), (9.5e-7, 1e-5), (1.489e-4, 4.5e-4), (3.3e-5, 9.9e-5)])
def test_parity_tolerance_is_three_times_the_measured_with_a_floor(measured, want):
    assert manifest.tolerance(measured) == pytest.approx(want)


def test_a_monai_bundle_gives_labels_and_input_shape(data, bedside_bin, tmp_path):
    bundle = tmp_path / "bundle"
    (bundle / "models").mkdir(parents=True)
    (bundle / "configs").mkdir()
    import synth
    synth.tiny_cnn(str(bundle / "models" / "model.onnx"), input_dims=("batch", 1, "h", "w"))
    (bundle / "configs" / "metadata.json").write_text(json.dumps({
        "name": "tiny bundle", "version": "0.3.0", "description": "a test bundle",
        "network_data_format": {
            "inputs": {"image": {"type": "image", "num_channels": 1, "spatial_shape": [64, 64]}},
            "outputs": {"pred": {"type": "probabilities", "num_channels": 3,
                                 "channel_def": {"0": "normal", "1": "effusion", "2": "other"}}}}}))
    out = str(tmp_path / "from-bundle")
    p = run_tool(["build", "--monai-bundle", str(bundle), "--task", "classification", "--thresholds", "0.5",
                  "--id", "tiny-bundle", "--version", "0.3.0", "--mean", "0.4", "--std", "0.25",
                  "--calib", data["calib"], "--out", out, "--no-bench"], bedside_bin)
    assert p.returncode == 0, p.stdout + p.stderr
    m = tomllib.load(open(os.path.join(out, "model.toml"), "rb"))
    assert [l["name"] for l in m["labels"]] == ["normal", "effusion", "other"]
    assert m["input"]["shape"] == [1, 1, 64, 64] and m["model"]["description"] == "a test bundle"


def test_a_label_code_reaches_the_manifest_and_bedside_reads_it(built):
    out = ok(built)
    m = tomllib.load(open(os.path.join(out, "model.toml"), "rb"))
    codes = {l["name"]: l.get("code") for l in m["labels"]}
    assert codes == {"normal": None, "other": None,
                     "effusion": {"value": "60046008", "scheme": "SCT", "meaning": "Pleural effusion"}}, codes


@pytest.mark.parametrize("code,says", [
    ("effusion=SCT:60046008", "LABEL=SCHEME:VALUE:MEANING"),
    ("nodule=SCT:27925004:Nodule", "is not one of the labels"),
    ("effusion=S C T:1:x", "without spaces"),
])
def test_a_bad_label_code_is_refused_before_anything_is_built(data, bedside_bin, tmp_path, code, says):
    out = tmp_path / "coded"
    p = run_tool(common_args(data["onnx"], str(out), data["calib"], ["--label-code", code]), bedside_bin)
    assert p.returncode == 2 and says in p.stderr, p.stderr
    assert not (out / "model.onnx").exists()

