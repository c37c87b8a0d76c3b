"""`legalign review` in a real browser: Debian's headless Chromium driven by Selenium.

Opens the worklist, drags a landmark, sees HKA change on the page, accepts, reloads and
finds the change kept.  Skipped (with the reason) when chromium / chromedriver are not
installed, except under CI=true, where it fails.  Set LEGALIGN_REVIEW_SCREENSHOT=PATH to
keep the viewer's screenshot (docs/images/review_viewer.png was made so).
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

import pytest
from review_run import free_port, make_review_run, start_server

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1600,1000",
)


def _need_browser() -> None:
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("the selenium package")
    if missing:
        why = f"browser test needs {', '.join(missing)} (apt-get install chromium chromium-driver)"
        if os.environ.get("CI") == "true":
            pytest.fail(why)
        pytest.skip(why)


def _driver(profile: Path):
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    opts = Options()
    opts.binary_location = str(CHROMIUM)
    for flag in (*FLAGS, f"--user-data-dir={profile}"):
        opts.add_argument(flag)
    # the driver binary is given explicitly: Selenium Manager never downloads anything
    return webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=opts)


def _wait(fn, timeout=60.0, what="condition"):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        try:
            last = fn()
            if last:
                return last
        except Exception as exc:  # noqa: BLE001 - the page is still changing
            last = exc
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


@pytest.mark.slow
def test_drag_accept_reload_in_headless_chromium(tmp_path):
    _need_browser()
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    run = make_review_run(tmp_path, n=2, fmt="dicom", seed=5)
    port = free_port()
    proc = start_server(run.results, port, tmp_path / "server.log")
    driver = _driver(tmp_path / "chromium-profile")
    try:
        driver.get(f"http://127.0.0.1:{port}/")
        _wait(lambda: driver.execute_script("return document.body.dataset.ready"), what="page")
        rows = driver.find_elements(By.CSS_SELECTOR, "#worklist tbody tr")
        assert len(rows) == 4
        _wait(lambda: driver.execute_script("return document.body.dataset.firstView"), what="film")
        first_view_ms = int(driver.execute_script("return document.body.dataset.firstView"))
        leg_id = driver.execute_script("return S.legId")

        def text(element_id: str) -> str:
            # read in one script call: the panel is re-rendered while values arrive
            return driver.execute_script(
                "const e = document.getElementById(arguments[0]); return e ? e.textContent : null",
                element_id,
            )

        def hka() -> str:
            return text("hka-current")

        before = hka()
        for attempt in range(3):  # the overlay is redrawn when pixels arrive: retry if stale
            try:
                knee = driver.find_element(By.CSS_SELECTOR, '.lm[data-name="knee_centre"] .hit')
                chain = ActionChains(driver).click_and_hold(knee)
                for _ in range(6):
                    chain = chain.move_by_offset(5, 0).pause(0.05)
                chain.release().perform()
                break
            except StaleElementReferenceException:
                if attempt == 2:
                    raise
        _wait(lambda: hka() != before, what="HKA to change")
        _wait(
            lambda: "saved" in (text("message") or ""),
            what="amended points saved",
        )
        after = hka()
        assert after != before
        assert text("review-state") == "in progress"
        shot = tmp_path / "review_viewer.png"
        driver.save_screenshot(str(shot))
        driver.find_element(By.ID, "btn-accept").click()
        _wait(
            lambda: text("review-state") == "amended",
            what="accepted as amended",
        )
        driver.refresh()
        _wait(lambda: driver.execute_script("return document.body.dataset.ready"), what="reload")
        assert driver.execute_script("return S.legId") == leg_id  # same leg after reload
        assert text("review-state") == "amended"
        assert hka() == after != before
        row = driver.execute_script(
            "return document.querySelector(`#worklist tr[data-leg='${arguments[0]}']`).textContent",
            leg_id,
        )
        assert "amended" in row
        # the worklist filters (here by |HKA|) and the keyboard moves through it
        hkas = [
            abs(float(r["hka_deg"]))
            for r in driver.execute_script("return S.rows.filter(r => r.hka_deg !== null)")
        ]
        cut = sorted(hkas)[len(hkas) // 2]
        box = driver.find_element(By.ID, "f-hka")
        box.send_keys(f"{cut:.2f}")
        shown = driver.execute_script("return S.view.length")
        assert shown == sum(1 for v in hkas if v >= round(cut, 2))
        assert 0 < shown < 4
        box.clear()
        driver.execute_script("document.getElementById('f-hka').dispatchEvent(new Event('input'))")
        assert driver.execute_script("return S.view.length") == 4
        driver.execute_script("document.activeElement.blur()")
        driver.find_element(By.TAG_NAME, "body").send_keys("j")
        _wait(lambda: driver.execute_script("return S.legId") != leg_id, what="next leg")
        target = os.environ.get("LEGALIGN_REVIEW_SCREENSHOT")
        if target:
            shutil.copyfile(shot, target)
        print(f"first view of the film in the browser: {first_view_ms} ms")
    finally:
        driver.quit()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except Exception:  # noqa: BLE001
            proc.kill()
