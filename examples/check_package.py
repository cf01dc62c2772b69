"""The install tests' check (check_install.sh, check_pip.sh): the rpa package on the path comes from PACKAGE_ROOT,
the librpa it loads from LIBRARY_ROOT, and a small call gives the hand-computed answer.
    python3 check_package.py PACKAGE_ROOT LIBRARY_ROOT WHAT"""
import sys

import numpy as np

import rpa

package_root, library_root, what = sys.argv[1:4]
assert rpa.__file__.startswith(package_root), rpa.__file__
assert rpa._library()._name.startswith(library_root), "librpa came from " + rpa._library()._name
out = rpa.ragged_paged_attention(np.ones((1, 2, 4), np.float32), np.ones((1, 16, 2, 4), np.float32), [3], [[0]],
                                 [0, 1], 1, backend="simd")
assert np.all(out == 1), out
print("%s: ok, %s" % (what, rpa._library()._name))
