"""Re-quantizes each shipped model's committed pruned fp32 with the factory's own quantize step (INT8 redirected
to a temp file) and compares the sha256 with the committed model.onnx: the check that the factory's int8 files
come out of tools/bedside-model's recipe unchanged.

  cd models/factory && ~/.cache/bedside-bench-venv/bin/python requant_check.py

Calibration data: $CACHE, $CACHE_DET, $CACHE_US (default: the per-channel study's caches, ~/.cache/bedside-study).
Measured 3 December 2026: cxr-tiny-cls and us-fast-fluid identical; cxr-tiny-det differs from the shipped file in
two activation scales at the 7th digit, the same bytes before and after the move to the tool's recipe: the study's
det calibration cache was generated apart from the build's, and its images differ in the last bits.
"""
import hashlib, importlib, os, sys, tempfile
F = "/work/main/models/factory"
os.environ.setdefault("CACHE", os.path.expanduser("~/.cache/bedside-study/cache-cls"))
os.environ.setdefault("CACHE_DET", os.path.expanduser("~/.cache/bedside-study/cache-det"))
os.environ.setdefault("CACHE_US", os.path.expanduser("~/.cache/bedside-study/cache-us"))
for d in (F, F + "/det", F + "/us"):
    sys.path.insert(0, d)
import torch; torch.set_num_threads(1)
sha = lambda p: hashlib.sha256(open(p, "rb").read()).hexdigest()
ok = True
for mod, model in (("quantize_manifest", "cxr-tiny-cls"), ("quantize_det", "cxr-tiny-det"), ("quantize_us", "us-fast-fluid")):
    m = importlib.import_module(mod)
    out = os.path.join(tempfile.mkdtemp(), "model.onnx")
    m.INT8 = out
    m.quantize()
    want = sha(f"/work/main/models/{model}/model.onnx")
    got = sha(out)
    print(model, "identical" if got == want else f"DIFFERENT {got} vs {want}")
    ok &= got == want
sys.exit(0 if ok else 1)
