#!/bin/sh
# `pip install . --no-build-isolation` into a fresh virtual environment, as the README gives it for Debian
# 12, then the installed package imported from another directory runs a call with the librpa inside it.
# The build is lean (no GPU plugins, no JAX module, one Highway target, no optimisation): this checks the
# packaging, not the kernels, and must fit CI's time.
set -eu
source=$1 python=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# A copy of the tree without its build folders: meson-python writes a file into the tree it builds.
mkdir "$tmp/src"
tar -C "$source" --exclude='./build*' --exclude=./.git -cf - . | tar -C "$tmp/src" -xf -
"$python" -m venv --system-site-packages "$tmp/env"
"$tmp/env/bin/pip" install --quiet --no-build-isolation --no-index --no-deps "$tmp/src" \
  --config-settings=setup-args="-Dcuda=disabled -Dhip=disabled -Djax=disabled -Dbuildtype=plain -Dcpp_args=-DHWY_COMPILE_ONLY_STATIC=1"
cd "$tmp"
unset RPA_LIBRARY RPA_PLUGIN_PATH LD_LIBRARY_PATH PYTHONPATH
PYTHONDONTWRITEBYTECODE=1 "$tmp/env/bin/python" "$source/examples/check_package.py" "$tmp/env" "$tmp/env" \
  "pip-installed package"
