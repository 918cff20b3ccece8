"""Headless Chromium for the status page's browser test (Debian's `chromium` and `chromium-driver`)."""

from __future__ import annotations

import os
import shutil
from typing import Any

import pytest

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")


def headless_chromium(*, width: int = 1200, height: int = 700) -> Any:
    """A selenium WebDriver on headless Chromium. Skips when Chromium, its driver or selenium is
    missing, except under CHUNKD_REQUIRE_BROWSER=1 (.ci/run installs them), where that fails."""
    browser = next((found for name in CHROMIUM_NAMES if (found := shutil.which(name))), None)
    driver = shutil.which("chromedriver")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        webdriver = None
    if browser is None or driver is None or webdriver is None:
        missing = [name for name, found in (("chromium", browser), ("chromedriver", driver), ("selenium", webdriver))
                   if found is None]
        message = f"{', '.join(missing)} not installed (apt-get install chromium chromium-driver; pip install selenium)"
        if os.environ.get("CHUNKD_REQUIRE_BROWSER"):
            pytest.fail(f"{message}, and CHUNKD_REQUIRE_BROWSER is set (.ci/run installs them)", pytrace=False)
        pytest.skip(message)
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     f"--window-size={width},{height}", "--hide-scrollbars"):
        options.add_argument(argument)
    return webdriver.Chrome(service=Service(driver), options=options)
