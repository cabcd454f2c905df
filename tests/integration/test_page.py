"""The web page in headless Chromium against the gateway and the real tritonserver."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest

from gateway.settings import GatewaySettings
from tests.integration.conftest import running_gateway

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.xdist_group("ci-run")]


def _chromium() -> tuple[Any, str]:
    """Headless Debian Chromium (flags: docs/design.md, "Environment") and a throwaway profile."""
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        # make setup installs them (apt): their absence is a broken setup, not a reason to skip
        pytest.fail("Debian chromium and chromium-driver are not installed; run make setup")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or ""
    profile = tempfile.mkdtemp(prefix="covidct-chromium-")
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options), profile


def test_page_shows_the_result_for_a_real_slice(gateway_url: str, real_data: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    driver, profile = _chromium()
    try:
        driver.get(gateway_url + "/")
        assert "Not a medical device" in driver.page_source
        slice_png = real_data / "covidxct-real" / "images" / "COVIDCTMD-P001-IM0038.png"
        driver.find_element(By.ID, "file").send_keys(str(slice_png))
        WebDriverWait(driver, 60).until(ec.visibility_of_element_located((By.ID, "result")))
        label = driver.find_element(By.ID, "label").text
        assert label.split(" ")[0] in ("Normal", "Pneumonia", "COVID-19")
        assert "(demo model)" in label
        shown = {
            e.get_attribute("data-class"): float(e.text.rstrip("%"))
            for e in driver.find_elements(By.CSS_SELECTOR, "td.p")
        }
        assert set(shown) == {"Normal", "Pneumonia", "COVID-19"}
        assert abs(sum(shown.values()) - 100) < 0.5
        assert max(shown, key=shown.get) == label.split(" ")[0]
        heat = driver.find_element(By.ID, "heatmap")
        assert driver.execute_script("return arguments[0].naturalWidth", heat) == 512
        assert "Not a medical device" in driver.find_element(By.ID, "use").text
        driver.save_screenshot(str(Path(profile) / "page.png"))
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def test_page_works_with_an_api_key(server, real_data: Path) -> None:
    """With COVIDCT_API_KEY set the page still loads; a call without the key says what to do,
    and with the key typed into the page the slice is classified."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    settings = GatewaySettings(triton_url=f"127.0.0.1:{server.grpc_port}", api_key="s3cret")
    slice_png = real_data / "covidxct-real" / "images" / "COVIDCTMD-cap001-IM0070.png"
    driver, profile = _chromium()
    try:
        with running_gateway(settings) as url:
            driver.get(url + "/")
            assert "Not a medical device" in driver.page_source
            find = driver.find_element
            find(By.ID, "file").send_keys(str(slice_png))
            WebDriverWait(driver, 30).until(
                ec.text_to_be_present_in_element((By.ID, "error"), "needs an API key")
            )
            find(By.ID, "apikey").send_keys("s3cret")
            find(By.ID, "file").clear()
            find(By.ID, "file").send_keys(str(slice_png))
            WebDriverWait(driver, 60).until(ec.visibility_of_element_located((By.ID, "result")))
            assert find(By.ID, "label").text.split(" ")[0] in ("Normal", "Pneumonia", "COVID-19")
            assert find(By.ID, "error").text == ""
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
