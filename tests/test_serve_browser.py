"""End to end in a real browser: Debian's chromium, headless, driven by selenium through /usr/bin/chromedriver.

Uploads a photograph on the page at /ui, presses Explain, and sees a grade and an overlay; in the Explore
tab, records a grader's verdict on a map.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

import test_serve_support as support

pytestmark = pytest.mark.timeout(300)

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
INSTALL = "apt-get install chromium chromium-driver"


@pytest.fixture(scope="module")
def browser():
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip(f"needs Debian's chromium and chromedriver ({CHROMIUM}, {CHROMEDRIVER}): {INSTALL}")
    webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (pip install -e '.[dev]')")
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="drray-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                 "--window-size=1400,1800", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    # An explicit chromedriver: selenium never looks for (or downloads) a driver of its own.
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def test_upload_a_photograph_and_see_the_grade_and_the_overlay(server, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 120)
    browser.get(f"{server.url}/ui/")
    upload = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#photo input[type=file]")))
    upload.send_keys(str(support.EXAMPLES / "synth_grade2.jpg"))
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#photo img")))  # the preview: upload done
    wait.until(ec.element_to_be_clickable((By.ID, "explain"))).click()
    wait.until(ec.text_to_be_present_in_element((By.ID, "grade"), "Grade"))
    grade = browser.find_element(By.ID, "grade").text
    assert any(f"Grade {g}" in grade for g in range(5)), grade
    assert "referable" in browser.find_element(By.ID, "referable").text.lower()
    overlay = wait.until(ec.visibility_of_element_located((By.CSS_SELECTOR, "#overlay img")))
    assert overlay.get_attribute("src") and overlay.size["width"] >= 64
    shown = browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth", overlay)
    assert shown and shown >= 128  # the image arrived and decoded, at the overlay's size


def test_review_a_map_in_the_explore_tab(server, browser):
    """Explore tab: show the rows, pick one, mark the lesion on its overlay, press "On the lesions": one file."""
    import pyarrow.parquet as pq
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    reviews = Path(server.run_dir) / "reviews"
    before = set(reviews.glob("*.parquet")) if reviews.exists() else set()
    wait = WebDriverWait(browser, 60)
    browser.get(f"{server.url}/ui/")
    tab = wait.until(ec.element_to_be_clickable((By.XPATH, "//button[@role='tab'][contains(., 'Explore')]")))
    tab.click()
    wait.until(ec.element_to_be_clickable((By.ID, "explore-show"))).click()
    wait.until(ec.text_to_be_present_in_element((By.ID, "explore-status"), "rows match"))
    thumb = wait.until(ec.element_to_be_clickable((By.CSS_SELECTOR, "#explore-gallery button img")))
    thumb.click()
    overlay = wait.until(ec.visibility_of_element_located((By.CSS_SELECTOR, "#explore-overlay img")))
    wait.until(ec.visibility_of_element_located((By.ID, "review-panel")))
    wait.until(ec.text_to_be_present_in_element((By.ID, "review-count"), "No verdict on this map yet"))
    overlay.click()  # the middle of the overlay: the lesion's point
    wait.until(ec.text_to_be_present_in_element((By.ID, "review-status"), "lesion marked at"))
    name = browser.find_element(By.CSS_SELECTOR, "#review-reviewer textarea, #review-reviewer input")
    name.send_keys("anna")
    token = browser.execute_script(  # the page's token for this verdict: it names the file
        "const e = document.querySelector('#review-token textarea, #review-token input'); return e && e.value")
    browser.find_element(By.ID, "review-on").click()
    wait.until(ec.text_to_be_present_in_element((By.ID, "review-status"), "recorded: on, by anna, for img"))
    wait.until(ec.text_to_be_present_in_element((By.ID, "review-count"), "on the lesions 1"))
    new = set(reviews.glob("*.parquet")) - before
    assert len(new) == 1, new
    (path,) = new
    assert token and path.name == f"{token}.parquet"
    row = pq.read_table(path).to_pylist()[0]
    assert row["reviewer"] == "anna" and row["verdict"] == "on" and row["cam_method"] == "gradcam"
    assert 0.3 < row["point_y"] < 0.7 and 0.3 < row["point_x"] < 0.7
    assert row["image_id"] in browser.find_element(By.ID, "review-status").text
