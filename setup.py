"""Build nwot_fast. (The compiled extension nwot_fast._C is added by the compiled-core work.)"""

from setuptools import find_packages, setup

setup(
    name="nwot_fast",
    version="0.1.0",
    description="Neural Architecture Search without Training (NASWOT) on NAS-Bench-201, fast and exact",
    packages=find_packages(include=["nwot_fast", "nwot_fast.*"]),
    python_requires=">=3.10",
    install_requires=["torch>=2.4", "numpy"],
    entry_points={"console_scripts": ["nwot-fast = nwot_fast.cli:main"]},
)
