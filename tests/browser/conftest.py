"""Fixtures for the console browser tests: the real binary, and headless
Debian chromium driven by playwright (no browser download)."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "python"))
