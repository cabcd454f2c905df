"""The study viewer (``/studies`` on the DICOM node's HTTP port) in headless Chromium: a
processed series' view (written as processing writes it), a node asking for its API key,
the list, one series with its slices, the heatmap overlay on and off, the per-slice curve,
the verdict and its rule. Screenshots go to ``$COVIDCT_TEST_ARTIFACTS`` (default
``test-artifacts/`` in the checkout) for a person to look at."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.dicomnode.scanner import node_settings, running_node
from tests.dicomnode.test_viewer import make_view
from tests.integration.test_page import _chromium

pytestmark = [pytest.mark.integration, pytest.mark.slow]

KEY = "viewer-page-key"
ARTIFACTS = Path(
    os.environ.get("COVIDCT_TEST_ARTIFACTS", Path(__file__).parents[2] / "test-artifacts")
)


def test_the_viewer_shows_a_series_its_heatmaps_and_curve_with_an_api_key(tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    settings = node_settings(tmp_path, api_key=KEY)
    key, _ = make_view(settings.spool_dir, slices=20)
    shots = ARTIFACTS / "viewer"
    shots.mkdir(parents=True, exist_ok=True)
    driver, profile = _chromium()
    driver.set_window_size(1280, 1000)
    try:
        with running_node(settings, http=True) as node:
            assert node.http_server is not None
            base = f"http://127.0.0.1:{node.http_server.port}"
            wait = WebDriverWait(driver, 30)
            driver.get(f"{base}/studies")
            assert "Not a medical device" in driver.page_source
            wait.until(ec.text_to_be_present_in_element((By.ID, "error"), "API key"))
            driver.find_element(By.ID, "apikey").send_keys(KEY + "\t")  # change: stored, reloaded
            wait.until(ec.visibility_of_element_located((By.ID, "list")))
            [row] = driver.find_elements(By.CSS_SELECTOR, "#rows tr")
            assert "synthetic-data model" in row.text and "20" in row.text
            verdict = row.find_element(By.CSS_SELECTOR, "td.verdict").text
            driver.save_screenshot(str(shots / "list.png"))

            row.find_element(By.TAG_NAME, "a").click()
            wait.until(ec.visibility_of_element_located((By.ID, "detail")))
            assert driver.current_url == f"{base}/studies/{key}"
            wait.until(
                lambda d: d.find_element(By.ID, "image").get_attribute("data-kind") == "heatmap"
            )
            assert driver.find_element(By.ID, "verdict").text.startswith(verdict)
            assert "mean of the slice probabilities" in driver.find_element(By.ID, "rule").text
            shown = {
                e.get_attribute("data-class"): e.text
                for e in driver.find_elements(By.CSS_SELECTOR, "td.p")
            }
            assert set(shown) == {"Normal", "Pneumonia", "COVID-19"}
            lines = driver.find_elements(By.CSS_SELECTOR, "#curve polyline.series")
            assert len(lines) == 3
            assert all(len(line.get_attribute("points").split()) == 20 for line in lines)
            image = driver.find_element(By.ID, "image")
            wait.until(lambda d: d.execute_script("return arguments[0].naturalWidth", image) > 0)
            assert driver.find_element(By.ID, "patient").get_attribute("hidden") is not None
            assert "normal002" not in driver.page_source  # the fixture's PatientID
            driver.save_screenshot(str(shots / "series-heatmap.png"))

            heat_src = image.get_attribute("src")
            driver.find_element(By.ID, "overlay").click()  # overlay off: the plain slice
            wait.until(
                lambda d: d.find_element(By.ID, "image").get_attribute("data-kind") == "slice"
            )
            assert image.get_attribute("src") != heat_src
            driver.save_screenshot(str(shots / "series-plain.png"))

            position = driver.find_element(By.ID, "position")
            driver.execute_script(
                "const s = document.getElementById('slider'); s.value = 0;"
                "s.dispatchEvent(new Event('input'));"
            )
            wait.until(lambda d: position.text == "slice 1 of 20")
            cursor_x = float(driver.find_element(By.ID, "cursor").get_attribute("x1"))
            assert cursor_x == pytest.approx(20.0)
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
    assert all(
        (shots / f).stat().st_size > 1000
        for f in ("list.png", "series-heatmap.png", "series-plain.png")
    )
