import os
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
import synth  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", "..", ".."))


@pytest.fixture(scope="session")
def bedside_bin():
    path = os.environ.get("BEDSIDE") or os.path.join(REPO, "target", "debug", "bedside")
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        why = f"no bedside binary at {path}: build it (cargo build) or set BEDSIDE=/path/to/bedside"
        if os.environ.get("BEDSIDE_MODEL_REQUIRE_BINARY"):
            pytest.fail(why)  # CI: a missing binary must not pass as skipped tests
        pytest.skip(why)
    return path


@pytest.fixture(scope="session")
def data(tmp_path_factory):
    """The tiny model (fixed and dynamic input), 16 calibration PNGs, a 12-image labelled set, an empty folder."""
    d = tmp_path_factory.mktemp("data")
    synth.image_folder(str(d / "calib"), 16, seed=0)
    synth.labelled_set(str(d / "eval"), 12, seed=1)
    (d / "empty").mkdir()
    return {"onnx": synth.tiny_cnn(str(d / "tiny.onnx")),
            "dynamic": synth.tiny_cnn(str(d / "tiny_dyn.onnx"), input_dims=(1, 1, "height", "width")),
            "calib": str(d / "calib"), "eval": str(d / "eval"), "empty": str(d / "empty"), "dir": d}


def common_args(model, out, calib, extra=()):
    return ["build", "--onnx", model, "--task", "classification", "--labels", ",".join(synth.LABELS),
            "--thresholds", "0.5,0.3,0.3", "--id", "tiny-cls", "--version", "0.0.1", "--window", "dicom",
            "--mean", "0.4", "--std", "0.25", "--calib", calib, "--out", out, *extra]


def run_tool(args, bedside):
    p = subprocess.run([sys.executable, "-m", "bedside_model", *args], capture_output=True, text=True,
                       env={**os.environ, "BEDSIDE": bedside}, timeout=300)
    return p


@pytest.fixture(scope="session")
def built(data, bedside_bin, tmp_path_factory):
    """One full build with the eval gate (a generous margin: the model is random, the set is 12 images)."""
    out = str(tmp_path_factory.mktemp("built") / "tiny-cls")
    p = run_tool(common_args(data["onnx"], out, data["calib"], ["--eval-data", data["eval"], "--max-drop", "0.5",
                                                                "--label-code", "effusion=SCT:60046008:Pleural effusion"]),
                 bedside_bin)
    return {"out": out, "proc": p, "bedside": bedside_bin}
