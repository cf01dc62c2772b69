"""`rpa info` against a plugin directory holding what is not a plugin: a FIFO and a directory named like
plugins (dlopen of a FIFO used to block forever) and a file whose name is not UTF-8 (`--json` used to
abort on it); and the simd prefill tiles it reports as RPA_SIMD_TILES selects them. Usage: test_info.py
PATH_TO_RPA"""
import json
import os
import subprocess
import sys
import tempfile

rpa = sys.argv[1]
with tempfile.TemporaryDirectory() as directory:
    os.mkfifo(os.path.join(directory, "librpa_fifo.so"))
    os.mkdir(os.path.join(directory, "librpa_directory.so"))
    with open(os.path.join(directory.encode(), b"librpa_\xff\xfe.so"), "wb") as garbage:
        garbage.write(b"not an ELF file")
    env = dict(os.environ, RPA_PLUGIN_PATH=directory)
    failures = []
    for mode in (["--json"], []):
        try:
            run = subprocess.run([rpa, "info"] + mode, env=env, capture_output=True, timeout=60)
        except subprocess.TimeoutExpired:
            failures.append("rpa info %s hung" % mode)
            continue
        if run.returncode != 0:
            failures.append("rpa info %s exited %d: %r" % (mode, run.returncode, run.stderr[-2000:]))
            continue
        if mode:
            info = json.loads(run.stdout.decode("utf-8"))  # valid UTF-8 and valid JSON
            reasons = {os.path.basename(p["path"]): p["reason"] for p in info["plugins"]}
            for name in ("librpa_fifo.so", "librpa_directory.so"):
                if reasons.get(name) != "skipped: not a regular file":
                    failures.append("%s: reason %r" % (name, reasons.get(name)))
            if reasons.get("librpa_\ufffd\ufffd.so", "").find("cannot be loaded") != 0:
                failures.append("the non-UTF-8 file: %r" % reasons)
    for choice, want in (("emulated", "emulated"), ("off", "off")):
        run = subprocess.run([rpa, "info", "--json"], env=dict(env, RPA_SIMD_TILES=choice), capture_output=True, timeout=60)
        tiles = json.loads(run.stdout.decode("utf-8"))["simd_tiles"]
        if tiles["path"] != want or "RPA_SIMD_TILES" not in tiles["reason"] and tiles["path"] != "off":
            failures.append("RPA_SIMD_TILES=%s: simd_tiles %r" % (choice, tiles))
        text = subprocess.run([rpa, "info"], env=dict(env, RPA_SIMD_TILES=choice), capture_output=True, timeout=60)
        if ("simd prefill tiles: " + want).encode() not in text.stdout:
            failures.append("RPA_SIMD_TILES=%s: text %r" % (choice, text.stdout[-500:]))
    if failures:
        sys.exit("\n".join(failures))
    print("ok")
