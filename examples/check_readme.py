"""The README's examples are the files in examples/: a code block right after `<!-- example: NAME -->` must
equal examples/NAME byte for byte, and every example (attention.*, *_example.py) must appear."""
import os
import re
import sys

root = sys.argv[1]
readme = open(os.path.join(root, "README.md"), encoding="utf-8").read()
blocks = re.findall(r"<!-- example: (\S+) -->\n```\w*\n(.*?)```\n", readme, re.S)
shown = {name for name, _ in blocks}
wanted = {name for name in os.listdir(os.path.join(root, "examples"))
          if name.startswith("attention.") or name.endswith("_example.py")}
failed = sorted(wanted - shown)
for name in failed:
    print("README.md shows no example %s" % name)
for name, text in blocks:
    if text != open(os.path.join(root, "examples", name), encoding="utf-8").read():
        print("README.md's copy of examples/%s differs from the file" % name)
        failed.append(name)
sys.exit(1 if failed else 0)
