"""Run a kernel through rpa's conformance suite from Python: a pytest of someone's kernel is two lines.

    def test_my_kernel():
        report = rpa.testing.run_suite(my_kernel)   # my_kernel(case) -> output, or (output, lse)
        assert report.passed, report
"""

import json
import os
import tempfile
import traceback

from .cases import _run_tool, load_case, save_candidate

__all__ = ["run_suite", "SuiteReport"]


class SuiteReport:
    """Per-case results of `rpa suite check`: passed (all of them), cases ({name: {"pass", "summary",
    "report"}}), failed (names), errors ({name: traceback} of cases where the function raised). str()
    is the command's per-case table, followed by the errors."""

    def __init__(self, data, text, errors):
        self.data, self.text, self.errors = data, text, errors
        self.cases = {c["name"]: c for c in data["cases"]}
        self.failed = [c["name"] for c in data["cases"] if not c["pass"]]
        self.passed = bool(data["pass"]) and not errors

    def __getitem__(self, name):
        return self.cases[name]

    def __bool__(self):
        return self.passed

    def __str__(self):
        lines = [self.text.rstrip()]
        for name, error in self.errors.items():
            lines.append("%s raised:\n%s" % (name, error.rstrip()))
        return "\n".join(lines)

    __repr__ = __str__


def run_suite(fn, directory=None, atol=None, rtol=None, cases=None):
    """Calls fn(case) (a rpa.Case of numpy arrays) on every conformance case and checks what it returns
    (the output [T, QH, D], or (output, lse)). directory: where the suite and the outputs are written
    (default: a temporary one); cases: only these names. Returns a SuiteReport."""
    with tempfile.TemporaryDirectory(prefix="rpa-suite-") as tmp:
        directory = directory or tmp
        _run_tool(["suite", "make", directory])
        with open(os.path.join(directory, "manifest.json")) as f:
            manifest = json.load(f)
        errors = {}
        for entry in manifest["cases"]:
            if cases is not None and entry["name"] not in cases:
                continue
            case = load_case(os.path.join(directory, entry["case"]))
            try:
                result = fn(case)
            except Exception:  # the case fails with its traceback; the others still run
                errors[entry["name"]] = traceback.format_exc()
                continue
            output, lse = result if isinstance(result, tuple) else (result, None)
            save_candidate(os.path.join(directory, entry["output"]), output, lse)
        if cases is not None:  # only the chosen cases: drop the others from the manifest
            manifest["cases"] = [e for e in manifest["cases"] if e["name"] in cases]
            with open(os.path.join(directory, "manifest.json"), "w") as f:
                json.dump(manifest, f)
        args = ["suite", "check", directory, "--json", os.path.join(directory, "report.json")]
        if atol is not None:
            args += ["--atol", repr(float(atol))]
        if rtol is not None:
            args += ["--rtol", repr(float(rtol))]
        result = _run_tool(args)
        with open(os.path.join(directory, "report.json")) as f:
            return SuiteReport(json.load(f), result.stdout, errors)
