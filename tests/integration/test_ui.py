"""The try-it page in a real headless Chromium (selenium, the system's chromedriver) against the real
service: upload docs/examples/shapes.png, wait for the overlay, and compare what the page shows with
the JSON answer fetched here for the same image; a panoptic model's segments; a keyed application
under a route prefix, with and without the key.

Skipped, saying why, where selenium, chromium or chromedriver is missing (.ci/run installs them).
One browser for the module: starting Chromium costs about two seconds.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import httpx
import pytest

from tests.integration.apps import API_KEYS_ENV, ENV_API_KEYS, MODEL, extra_app, light_args, temp_repository

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
SHAPES = ROOT / "docs" / "examples" / "shapes.png"
PANOPTIC = "panoptic-shapes"
KEYED_APP = "uikeys"
WAIT_S = 60
# Headless and quiet: without the background-networking flags Chromium keeps dialling Google's
# services, which a closed network refuses (and a sandbox needs privileges CI's root shell lacks).
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,1024",
)


def browser_paths() -> tuple[str, str]:
    """(chromium, chromedriver) from PATH, or skip saying what is missing."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not (chromium and driver):
        missing = [n for n, p in (("chromium", chromium), ("chromedriver", driver)) if not p]
        pytest.skip(
            f"no headless browser: {' and '.join(missing)} not on PATH "
            "(Debian: apt-get install chromium chromium-driver; .ci/run installs them)"
        )
    return chromium, driver


@pytest.fixture(scope="module")
def keyed_url(service):
    """A keyed application at /uikeys (keys from the env the Ray workers inherited): its base URL."""
    with temp_repository(KEYED_APP, deployment={"num_cpus": 0}) as repository:
        args = light_args(repository, api_keys_env=API_KEYS_ENV)
        with extra_app(service, KEYED_APP, args) as url:
            yield url


@pytest.fixture(scope="module")
def browser(request):
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (dev extra)")
    from selenium.webdriver.chrome.service import Service as DriverService

    chromium, driver_path = browser_paths()
    # The keyed application is deployed before the browser opens any connection: adding an application
    # reloads HAProxy, and a kept-alive connection opened before the reload is still routed by the old
    # configuration (its next request to /uikeys reached the "/" application's 404).
    request.getfixturevalue("keyed_url")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    with tempfile.TemporaryDirectory(prefix="segserve-chromium-") as profile:
        options.add_argument(f"--user-data-dir={profile}")
        # The driver's path given explicitly: Selenium Manager (which would download one) never runs.
        driver = webdriver.Chrome(options=options, service=DriverService(executable_path=driver_path))
        driver.set_page_load_timeout(WAIT_S)
        try:
            yield driver
        finally:
            driver.quit()


# --- helpers --------------------------------------------------------------------------------------------


def by_id(driver, element_id: str):
    from selenium.webdriver.common.by import By

    return driver.find_element(By.ID, element_id)


def wait_state(driver, *states: str, after: str | None = None) -> str:
    """Wait until the page's ``data-state`` is one of ``states`` (and, with ``after``, the shown answer's
    request id differs from it); return the status line."""
    from selenium.webdriver.support.ui import WebDriverWait

    def reached(d):
        body = d.find_element("tag name", "body")
        if body.get_attribute("data-state") not in states:
            return False
        return after is None or by_id(d, "result").get_attribute("data-request-id") != after

    try:
        WebDriverWait(driver, WAIT_S, poll_frequency=0.1).until(reached)
    except Exception:
        state = driver.find_element("tag name", "body").get_attribute("data-state")
        pytest.fail(f"page stuck in state {state!r}: {by_id(driver, 'status').text!r}")
    return by_id(driver, "status").text


def click_and_wait(driver, element_id: str, *states: str) -> str:
    """Click, then wait for one of ``states`` reached after the click (the old state is cleared first)."""
    driver.execute_script("document.body.dataset.state = 'clicked'")
    by_id(driver, element_id).click()
    return wait_state(driver, *states)


def open_page(driver, base_url: str) -> None:
    driver.get(f"{base_url}/")
    driver.execute_script("sessionStorage.clear()")
    driver.refresh()


def choose(driver, select_id: str, value: str) -> None:
    from selenium.webdriver.support.ui import Select

    Select(by_id(driver, select_id)).select_by_value(value)


def upload(driver) -> str:
    """Choose shapes.png in the page's file input (as a user would); return the previous request id."""
    before = by_id(driver, "result").get_attribute("data-request-id")
    by_id(driver, "file").send_keys(str(SHAPES))
    return before


def shown_answer(driver) -> dict:
    """What the page shows, read from its tables and images."""
    rows = lambda table: by_id(driver, table).find_elements("css selector", "tbody tr")  # noqa: E731
    overlay = by_id(driver, "overlay")
    return {
        "request_id": by_id(driver, "result").get_attribute("data-request-id"),
        "legend": {
            int(r.get_attribute("data-class-id")): int(r.find_element("css selector", ".pixels").text)
            for r in rows("legend")
        },
        "names": [r.find_elements("tag name", "td")[2].text for r in rows("legend")],
        "swatches": [
            r.find_element("css selector", ".swatch").value_of_css_property("background-color")
            for r in rows("legend")
        ],
        "segments": sorted(int(r.get_attribute("data-segment-id")) for r in rows("segments")),
        "segments_shown": by_id(driver, "segments-box").is_displayed(),
        "stages": [r.get_attribute("data-stage") for r in rows("timings")],
        "overlay_size": driver.execute_script(
            "const i = arguments[0]; return i.complete ? [i.naturalWidth, i.naturalHeight] : null;", overlay
        ),
        "info": by_id(driver, "answer-info").text,
    }


def json_answer(base_url: str, model: str, fmt: str = "png", key: str | None = None) -> dict:
    headers = {"content-type": "image/png"}
    if key:
        headers["authorization"] = f"Bearer {key}"
    r = httpx.post(
        f"{base_url}/v1/models/{model}/segment",
        params={"format": fmt, "overlay": "true"},
        content=SHAPES.read_bytes(),
        headers=headers,
        timeout=WAIT_S,
    )
    assert r.status_code == 200, r.text
    return r.json()


def model_colors(base_url: str, model: str, key: str | None = None) -> dict[int, str]:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    info = httpx.get(f"{base_url}/v1/models/{model}", headers=headers, timeout=WAIT_S).json()
    return {c["id"]: "rgba({}, {}, {}, 1)".format(*c["color"]) for c in info["classes"]}


def assert_shows(shown: dict, answer: dict, colors: dict[int, str]) -> None:
    assert shown["legend"] == {c["id"]: c["pixels"] for c in answer["classes"]}
    assert shown["names"] == [c["name"] for c in answer["classes"]]
    assert shown["swatches"] == [colors[c["id"]] for c in answer["classes"]]
    assert shown["overlay_size"] == [answer["width"], answer["height"]]
    assert shown["stages"] == list(answer["timings_ms"])


# --- tests ----------------------------------------------------------------------------------------------


def test_the_page_shows_the_answer_of_the_api_for_an_uploaded_image(service, browser):
    open_page(browser, service.url)
    assert browser.current_url == f"{service.url}/ui/"
    wait_state(browser, "ready")
    options = [o.get_attribute("value") for o in by_id(browser, "model").find_elements("tag name", "option")]
    listed = httpx.get(f"{service.url}/v1/models", timeout=WAIT_S).json()["models"]
    assert options == [m["name"] for m in listed]

    choose(browser, "model", MODEL)
    choose(browser, "format", "rle")
    before = upload(browser)
    status = wait_state(browser, "done", after=before)
    shown = shown_answer(browser)

    answer = json_answer(service.url, MODEL, "rle")
    pixels = [c["pixels"] for c in answer["classes"]]
    assert sum(pixels) == answer["width"] * answer["height"]
    assert min(pixels[1:]) > 0, "shapes.png shows every class: a legend of zeros would prove little"
    assert_shows(shown, answer, model_colors(service.url, MODEL))
    assert "mask: rle" in shown["info"] and f"{answer['width']}\u00d7{answer['height']}" in status
    assert not shown["segments_shown"]


def test_a_panoptic_model_lists_its_segments(service, browser):
    open_page(browser, service.url)
    wait_state(browser, "ready")
    choose(browser, "model", PANOPTIC)
    choose(browser, "format", "coco_panoptic")
    wait_state(browser, "done", after=upload(browser))
    shown = shown_answer(browser)

    answer = json_answer(service.url, PANOPTIC, "coco_panoptic")
    assert answer["segments"], "shapes.png has shapes: the panoptic answer lists segments"
    assert shown["segments_shown"]
    assert shown["segments"] == sorted(s["id"] for s in answer["segments"])
    assert_shows(shown, answer, model_colors(service.url, PANOPTIC))
    assert "mask: coco_panoptic" in shown["info"]


def test_the_page_under_a_prefix_asks_for_the_key_and_works_with_it(browser, keyed_url):
    url, key = keyed_url, ENV_API_KEYS[0]
    # The page is open; the API it calls is not.
    assert httpx.get(f"{url}/ui/", timeout=WAIT_S).status_code == 200
    assert httpx.get(f"{url}/v1/models", timeout=WAIT_S).status_code == 401

    browser.get(url)  # the mount point without its slash: still reaches <prefix>/ui/
    assert browser.current_url == f"{url}/ui/", browser.page_source[:2000]
    browser.execute_script("sessionStorage.clear()")
    browser.refresh()
    status = wait_state(browser, "error")
    assert status.startswith("401 unauthenticated") and "API key" in status, status
    assert not by_id(browser, "model").find_elements("tag name", "option")

    by_id(browser, "api-key").send_keys("not-the-key")
    assert click_and_wait(browser, "use-key", "error").startswith("401"), "a wrong key is refused"

    by_id(browser, "api-key").clear()
    by_id(browser, "api-key").send_keys(key)
    click_and_wait(browser, "use-key", "ready")
    assert browser.execute_script("return sessionStorage.getItem('segserve.apiKey')") == key
    choose(browser, "format", "png")
    wait_state(browser, "done", after=upload(browser))
    answer = json_answer(url, MODEL, key=key)
    assert_shows(shown_answer(browser), answer, model_colors(url, MODEL, key))

    assert click_and_wait(browser, "forget-key", "error").startswith("401")
    assert browser.execute_script("return sessionStorage.getItem('segserve.apiKey')") is None
