"""`--torch … --prune`: a PyTorch model is pruned with torch-pruning, fine-tuned by the user's hook, and the int8
model is made from the pruned one; the folder carries all three forms and bedside checks parity on each. Needs
torch and torch-pruning (the `torch` extra): skipped without them, which is the case in CI (torch is ~1 GB)."""
import os
import tomllib

import onnx
import pytest
from conftest import HERE, run_tool

pytest.importorskip("torch", reason="the pruning tests need PyTorch (pip install 'bedside-model[torch]')")
pytest.importorskip("torch_pruning", reason="the pruning tests need torch-pruning (pip install 'bedside-model[torch]')")


def conv_out_channels(path):
    """Output channels of each convolution (Conv: weight is input 1; QLinearConv: input 3), in graph order."""
    m = onnx.load(path)
    init = {i.name: i for i in m.graph.initializer}
    weight = {"Conv": 1, "QLinearConv": 3}
    return [list(init[n.input[weight[n.op_type]]].dims)[0] for n in m.graph.node if n.op_type in weight]


def args(out, calib, extra=()):
    return ["build", "--torch", "torchnet:build", "--example-shape", "1,1,64,64", "--task", "classification",
            "--labels", "a,b,c", "--thresholds", "0.5,0.5,0.5", "--id", "torchnet", "--version", "0.0.1",
            "--mean", "0.4", "--std", "0.25", "--calib", calib, "--out", out, "--no-bench", *extra]


@pytest.fixture(scope="module")
def pruned(data, bedside_bin, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("pruned") / "torchnet")
    marker = str(tmp_path_factory.mktemp("marker") / "finetuned")
    os.environ["TORCHNET_FINETUNED"] = marker
    cwd = os.getcwd()
    os.chdir(HERE)  # the hook and the factory are found from the working directory
    try:
        p = run_tool(args(out, data["calib"], ["--prune", "0.5", "--finetune", "torchnet:finetune"]), bedside_bin)
    finally:
        os.chdir(cwd)
    assert p.returncode == 0, f"build failed ({p.returncode}):\n{p.stdout}\n{p.stderr}"
    return {"out": out, "proc": p, "marker": marker}


def test_the_pruned_form_is_half_as_wide_and_named_in_the_manifest(pruned):
    out = pruned["out"]
    m = tomllib.load(open(os.path.join(out, "model.toml"), "rb"))
    assert m["model"]["pruned"]["file"] == "model.pruned.onnx"
    from bedside_model import manifest
    assert m["model"]["pruned"]["sha256"] == manifest.sha256(os.path.join(out, "model.pruned.onnx"))
    dense = conv_out_channels(os.path.join(out, "model.fp32.onnx"))
    thin = conv_out_channels(os.path.join(out, "model.pruned.onnx"))
    int8 = conv_out_channels(os.path.join(out, "model.onnx"))
    assert dense == [32, 32, 32, 64], dense
    # Half of each width, rounded to 8; the residual pair stays equal (torch-pruning's dependency graph).
    assert thin == [16, 16, 16, 32], thin
    assert int8 == thin, "the int8 model is quantized from the pruned one"


def test_the_hook_fine_tuned_and_the_card_says_what_pruning_did(pruned):
    assert open(pruned["marker"]).read() == "fine-tuned\n"
    card = open(os.path.join(pruned["out"], "MODEL_CARD.md")).read()
    assert "## Pruning" in card and "torchnet:finetune" in card
    assert "50% of the channels" in card


def test_bedside_checks_parity_on_all_three_forms(pruned, bedside_bin):
    import subprocess
    r = subprocess.run([bedside_bin, "parity", "--model", pruned["out"], "--fixtures",
                        os.path.join(pruned["out"], "fixtures")], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    # "torchnet int8: 6 cases, max |tract - onnxruntime| …: ok", one line per form.
    forms = {line.split()[1].rstrip(":") for line in r.stdout.splitlines() if line.endswith(": ok")}
    assert forms == {"int8", "pruned", "fp32"}, r.stdout


def test_prune_needs_a_torch_source_and_finetune_needs_prune(data, bedside_bin, tmp_path):
    from conftest import common_args
    p = run_tool(common_args(data["onnx"], str(tmp_path / "x"), data["calib"], ["--prune", "0.5"]), bedside_bin)
    assert p.returncode != 0 and "--prune works on a PyTorch module" in p.stderr
    cwd = os.getcwd()
    os.chdir(HERE)
    try:
        p = run_tool(args(str(tmp_path / "y"), data["calib"], ["--finetune", "torchnet:finetune"]), bedside_bin)
        assert p.returncode != 0 and "--finetune is the hook run after --prune" in p.stderr
        p = run_tool(args(str(tmp_path / "z"), data["calib"], ["--prune", "1.5"]), bedside_bin)
        assert p.returncode != 0 and "between 0 and 1" in p.stderr
    finally:
        os.chdir(cwd)
