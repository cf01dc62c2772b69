"""pyproject.toml's build backend: meson-python, with the Meson options a wheel needs.

meson-python 0.12 (Debian 12's python3-mesonpy) rejects a [tool.meson-python.args] table, so the options
are added to the config settings here; a caller's own setup-args come after them and apply. Debian 12's
pip (23.0) keeps only the last --config-settings of a key, so a setup-args string is split like a shell
command line: -Csetup-args="-Dcuda=disabled -Dhip=disabled" passes two options.
"""

import shlex

import mesonpy
from mesonpy import build_sdist, get_requires_for_build_sdist  # noqa: F401 (PEP 517 hooks)

_WHEEL_ARGS = ("-Dpython_wheel=true", "-Dtests=false")


def _settings(config_settings):
    settings = dict(config_settings or {})
    given = settings.get("setup-args", ())
    settings["setup-args"] = list(_WHEEL_ARGS) + (shlex.split(given) if isinstance(given, str) else list(given))
    return settings


def get_requires_for_build_wheel(config_settings=None):
    return mesonpy.get_requires_for_build_wheel(_settings(config_settings))


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    return mesonpy.build_wheel(wheel_directory, _settings(config_settings), metadata_directory)
