"""The bedside binary: every measurement of the model folder is made by it (prepare, parity, eval, bench, check),
so that what is written is what the daemon computes."""
import os
import re
import shutil
import subprocess
from dataclasses import dataclass

from . import Refused


@dataclass
class Result:
    argv: list
    returncode: int
    stdout: str
    stderr: str

    def tail(self, n=20):
        lines = (self.stdout + self.stderr).strip().splitlines()
        return "\n".join(lines[-n:])


def find(explicit=None):
    """The binary: --bedside, else $BEDSIDE, else `bedside` on PATH, else target/{release,debug}/bedside above here."""
    for cand in (explicit, os.environ.get("BEDSIDE")):
        if cand:
            if not (os.path.isfile(cand) and os.access(cand, os.X_OK)):
                raise Refused(f"bedside binary {cand!r} is not an executable file", status=2)
            return os.path.abspath(cand)
    on_path = shutil.which("bedside")
    if on_path:
        return on_path
    here = os.path.dirname(os.path.abspath(__file__))
    for up in (here, os.getcwd()):
        d = up
        for _ in range(6):
            for kind in ("release", "debug"):
                p = os.path.join(d, "target", kind, "bedside")
                if os.path.isfile(p) and os.access(p, os.X_OK):
                    return p
            d = os.path.dirname(d)
    raise Refused("no bedside binary: pass --bedside PATH or set BEDSIDE (cargo build gives target/debug/bedside)",
                  status=2)


class Bedside:
    def __init__(self, path, verbose=False):
        self.path = path
        self.verbose = verbose

    def run(self, *args, timeout=1800):
        argv = [self.path, *map(str, args)]
        if self.verbose:
            print("+", " ".join(argv), flush=True)
        # Piped stderr: bedside eval prints plain progress lines instead of a bar.
        p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                           env={**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")})
        return Result(argv, p.returncode, p.stdout, p.stderr)

    def prepare(self, model_dir, dump, inputs):
        return self.run("prepare", "--model", model_dir, "--dump", dump, *inputs)

    def parity(self, model_dir, fixtures):
        return self.run("parity", "--model", model_dir, "--fixtures", fixtures)

    def eval(self, model_dir, data, out, max_drop=None):
        args = ["eval", "--model", model_dir, "--data", data, "--compare", "parent", "--out", out]
        if max_drop is not None:
            # `=`: a negative margin must not be read as an option.
            args.append(f"--max-drop={max_drop}")
        return self.run(*args)

    def bench(self, model_dir, runs=20):
        return self.run("bench", "--model", model_dir, "--runs", runs)

    def measure(self, model_dir):
        return self.run("models", "measure", model_dir)

    def check(self, board):
        return self.run("check", "--board", board)


# `bedside parity` prints one line per form (src/model/parity.rs, FormReport's Display).
PARITY_LINE = re.compile(
    r"^(?P<model>\S+) (?P<key>\S+): (?P<cases>\d+) cases, max \|tract - onnxruntime\| (?P<max_abs>\S+) "
    r"\(tolerance (?P<tol>\S+)\), decisions agree (?P<agree>\S+) \(need (?P<need>\S+)\): (?P<verdict>ok|FAILED)$")


def parse_parity(stdout):
    """{key: {max_abs, tolerance, agreement, needed, ok, cases}} from `bedside parity`'s output."""
    out = {}
    for line in stdout.splitlines():
        m = PARITY_LINE.match(line.strip())
        if m:
            out[m["key"]] = {"max_abs": float(m["max_abs"]), "tolerance": float(m["tol"]),
                             "agreement": float(m["agree"]), "needed": float(m["need"]),
                             "ok": m["verdict"] == "ok", "cases": int(m["cases"])}
    return out


def parse_bench(stdout):
    """{'fp32': {median_ms, p10_ms, p90_ms, min_ms}, 'int8': {...}, 'header': str} from `bedside bench --model`."""
    out = {}
    lines = stdout.splitlines()
    if lines:
        out["header"] = lines[0].strip()
    for line in lines:
        parts = line.split()
        if len(parts) == 5 and parts[0] in ("fp32", "int8", "pruned"):
            try:
                vals = [float(v) for v in parts[1:]]
            except ValueError:
                continue
            out[parts[0]] = dict(zip(("median_ms", "p10_ms", "p90_ms", "min_ms"), vals))
        elif "the speed of fp32" in line:
            out["ratio_line"] = line.strip()
    return out


def parse_check_memory(stdout, model_id):
    """From `bedside check`'s memory plan: the model's measured MiB lines (printed to 0.01 MiB)."""
    out = {}
    for line in stdout.splitlines():
        if not line.startswith(f"model {model_id} ("):
            continue
        m = re.match(r"^(?P<what>.+?)\s+(?P<mib>[0-9.]+)\s+[0-9.]+\s+(?P<basis>measured|computed|reserved)\s*$", line)
        if not m:
            continue
        what = m["what"]
        if "tract working memory" in what:
            out["working_mib"] = float(m["mib"])
        elif "weights, plan, state" in what:
            out["resident_mib"] = float(m["mib"])
        out["basis"] = m["basis"]
    return out


def parse_measure(stdout):
    """`bedside models measure`'s `tract_working_bytes = N`, or None."""
    for line in stdout.splitlines():
        if line.startswith("tract_working_bytes = "):
            return int(line.split("=", 1)[1])
    return None
