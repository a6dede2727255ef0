"""Helpers for the console browser tests: the real binary (started by the
SDK tests' helpers) and headless Debian chromium driven by playwright, with
no browser download."""

import importlib.util
import os

_spec = importlib.util.spec_from_file_location(
    "custos_sdk_conftest", os.path.join(os.path.dirname(__file__), "..", "python", "conftest.py")
)
_sdk = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_sdk)

start_custos = _sdk.start_custos
stop_custos = _sdk.stop_custos
