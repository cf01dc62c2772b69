#!/bin/sh
# Installs the build into a fresh directory and uses it from elsewhere, as a user would: the Python
# package imported from another directory finds its own librpa, the installed `rpa` command runs through
# its RPATH, and CMake's find_package(rpa) builds and runs the C and C++ examples.
set -eu
build=$1 source=$2 python=$3
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
meson install -C "$build" --no-rebuild --quiet --destdir "$tmp/root" >/dev/null
prefix=$(find "$tmp/root" -name rpaConfig.cmake | sed 's|/lib/.*||')
package=$(dirname "$(find "$tmp/root" -path '*/rpa/__init__.py')")
cd "$tmp"
unset RPA_LIBRARY RPA_PLUGIN_PATH LD_LIBRARY_PATH  # meson test points LD_LIBRARY_PATH at the build
PYTHONPATH=$(dirname "$package") PYTHONDONTWRITEBYTECODE=1 "$python" "$source/examples/check_package.py" \
  "$package" "$tmp" "installed package"
ldd "$prefix/bin/rpa" | grep -q "librpa.so.0 => $prefix/" || { ldd "$prefix/bin/rpa"; exit 1; }
"$prefix/bin/rpa" info >/dev/null
echo "installed rpa command: ok, its RPATH finds $prefix's librpa"
cmake -S "$source/examples" -B "$tmp/cmake" -DCMAKE_PREFIX_PATH="$prefix" >/dev/null
cmake --build "$tmp/cmake" >/dev/null
"$tmp/cmake/attention_c" && "$tmp/cmake/attention_cpp"
echo "find_package(rpa): ok"
