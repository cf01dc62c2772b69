"""Fails unless `readelf -d PLUGIN` lists its needed libraries and none is a ROCm runtime library."""
import re
import subprocess
import sys

dynamic = subprocess.run(['readelf', '-d', sys.argv[1]], check=True, capture_output=True, text=True).stdout
needed = re.findall(r'\(NEEDED\)\s+Shared library: \[([^\]]+)\]', dynamic)
print('NEEDED:', ', '.join(needed))
if not needed:
    sys.exit('readelf -d listed no NEEDED entry: cannot tell')
rocm = [name for name in needed if re.match(r'lib(amdhip64|hiprtc|hsa-runtime64|amd_comgr)', name)]
if rocm:
    sys.exit('%s links the ROCm runtime: %s' % (sys.argv[1], ', '.join(rocm)))
