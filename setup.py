"""Install ``policy/`` and ``daemon/`` as ``sluice.policy`` and ``sluice.daemon``.

Everything else is in pyproject.toml. setuptools' own package discovery does
not add the ``sluice.`` prefix, so the packages are found here and renamed;
a subpackage added later is found without touching this file.
"""

from setuptools import find_packages, setup

PARTS = ("policy", "daemon")

setup(
    packages=["sluice." + name for name in find_packages(include=[f"{p}*" for p in PARTS])],
    package_dir={f"sluice.{p}": p for p in PARTS},
)
