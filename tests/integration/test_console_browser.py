"""The console in a real browser: Debian's chromium, driven through its chromedriver by Selenium (no
browser download). Cards for 8 replayed GPUs whose charts move with the replay; the pcie phase on one
card (util.gpu high, SM activity low); an alert that appears and colours its card; a silence made with
the form that keeps the webhook receiver from hearing of that GPU's alert; no console error; and the
page behind basic auth and TLS."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import bcrypt
import pytest

from tests.support.processes import Gpumon, need
from tests.support.tls import make_pki
from tests.support.webhook import WebhookReceiver

pytestmark = pytest.mark.integration
webdriver = pytest.importorskip("selenium.webdriver")
Keys = pytest.importorskip("selenium.webdriver.common.keys").Keys


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = need("chromium")
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,1000", "--ignore-certificate-errors"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(need("chromedriver")), options=options)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(autouse=True)
def fresh_page(browser: Any) -> Iterator[None]:
    """Each test starts with an empty log, and leaves no page polling a gpumon it has stopped."""
    browser.get("about:blank")
    browser.get_log("browser")
    yield
    browser.get("about:blank")


def wait(what: Callable[[], Any], timeout: float = 20.0, message: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = what()
        if got:
            return got
        assert time.monotonic() < deadline, message or "timed out"
        time.sleep(0.2)


def refreshed(driver: Any) -> int:
    return int(driver.execute_script("return document.getElementById('console').dataset.refreshed || '0'"))


def chart(driver: Any, gpu: int, name: str) -> dict[str, Any]:
    return driver.execute_script(
        "const f = document.querySelector(`article[data-gpu='${arguments[0]}'] figure[data-chart='${arguments[1]}']`);"
        "return {points: Number(f.dataset.points || 0), lastT: Number(f.dataset.lastT || 0),"
        " last: JSON.parse(f.dataset.last || '[]'), canvas: !!f.querySelector('canvas')};", gpu, name)


def errors(driver: Any) -> list[dict[str, Any]]:
    return [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def test_cards_for_8_gpus_move_with_the_replay_and_show_the_pcie_phase(browser: Any, tmp_path: Path) -> None:
    with Gpumon(tmp_path, backend="replay:demo,loop,gpus=8") as gpumon:
        browser.get(gpumon.url + "/")
        wait(lambda: refreshed(browser) >= 2, message="the console never refreshed")
        cards = browser.find_elements("css selector", "article.card")
        assert [c.get_attribute("data-gpu") for c in cards] == [str(i) for i in range(8)]
        before = [chart(browser, i, "activity") for i in range(8)]
        assert all(c["canvas"] and c["points"] >= 1 for c in before)
        wait(lambda: all(chart(browser, i, "activity")["lastT"] > before[i]["lastT"] for i in range(8)),
             message="the charts did not move")
        after = chart(browser, 0, "memory")
        assert after["last"][1] == 150754820096  # the H200's memory, the chart's second series
        # Somewhere in the 42-second loop a GPU is in the pcie phase: util.gpu high, SM activity low.
        found = wait(lambda: _pcie_card(browser, gpumon.url), timeout=50, message="no card showed the pcie phase")
        sm, util = found
        assert util > 0.8 and sm < 0.2
        # Accounting's idle share of held time, on the cards of GPUs a process held.
        waste = wait(lambda: [e.text for e in browser.find_elements("css selector", "[data-field='waste']") if e.text])
        assert all("of the time held (last 5m)" in w for w in waste)
        # On a phone the cards stack in one column, no wider than the screen.
        browser.set_window_size(400, 900)
        try:
            def fits() -> bool:  # once the charts are redrawn at the new width
                scroll, client = browser.execute_script("const e = document.documentElement;"
                                                        "return [e.scrollWidth, e.clientWidth];")
                return bool(scroll <= client + 1)
            wait(fits, timeout=5, message="the page is wider than a phone's screen")
            first, second = (c.rect for c in browser.find_elements("css selector", "article.card")[:2])
            assert first["x"] == second["x"] and second["y"] > first["y"]
        finally:
            browser.set_window_size(1400, 1000)
        assert not errors(browser)


PCIE_NOW = 'gpumon_replay_phase{phase="pcie"} == 1'


def _pcie_card(driver: Any, url: str) -> tuple[float, float] | None:
    phases = driver.execute_script(
        "const r = await fetch('/api/v1/query?query=' + encodeURIComponent(arguments[0]));"
        "return (await r.json()).data.result.map((s) => s.metric.gpu);", PCIE_NOW)
    for gpu in phases:
        sm, util = chart(driver, int(gpu), "activity")["last"]
        if sm is not None and util is not None and util > 0.8 and sm < 0.2:
            return sm, util
    return None


def test_a_mig_gpu_shows_its_instances_through_a_reconfiguration(browser: Any, tmp_path: Path) -> None:
    from tests.fixtures.mig.generate import OUT_DIR as MIG

    with Gpumon(tmp_path, "--fast-interval", "250ms", backend=f"replay:{MIG},loop,speed=4") as g:
        browser.get(g.url + "/")
        layouts: set[frozenset[str]] = set()

        def both_layouts_seen() -> bool:
            layouts.add(frozenset(browser.execute_script(  # read in one go: the rows are redrawn each poll
                "return [...document.querySelectorAll(\"article[data-gpu='0'] table.mig tbody tr\")]"
                ".map((r) => r.dataset.instance);")))
            return {frozenset({"2", "3", "9", "10"}), frozenset({"2", "9", "10", "11", "12"})} <= layouts
        wait(both_layouts_seen, timeout=30, message=f"the MIG layouts seen: {layouts}")
        row = browser.execute_script("return document.querySelector(\"article[data-gpu='0'] table.mig \""
                                     " + \"tr[data-instance='2']\").textContent;")
        assert "3g.71gb" in row and "GiB" in row
        figure = browser.find_element("css selector", "article[data-gpu='0'] figure[data-chart='mig']")
        assert figure.is_displayed() and json.loads(figure.get_attribute("data-instances"))
        assert not errors(browser)


def test_an_alert_appears_and_a_silence_from_the_form_mutes_the_receiver(browser: Any, tmp_path: Path) -> None:
    hook = WebhookReceiver()
    (tmp_path / "hot.yml").write_text("""groups:
  - name: console
    rules:
      - alert: ConsoleTestHot
        expr: gpumon_gpu_temperature_celsius > 0
        for: 8s
        labels: {severity: critical}
        annotations: {summary: "GPU {{ $labels.gpu }} is warm"}
""")
    (tmp_path / "url").write_text(hook.url + "\n")
    (tmp_path / "gpumon.yaml").write_text("""
rules: {files: ["hot.yml"], evaluation_interval: 500ms}
notify:
  receivers:
    - name: ops
      webhook: {url_file: url}
  route: {receiver: ops, group_by: [alertname, gpu], group_wait: 500ms, group_interval: 2s, repeat_interval: 4h}
""")
    with hook, Gpumon(tmp_path, "--config", str(tmp_path / "gpumon.yaml"), backend="replay:demo,loop,gpus=2") as g:
        browser.get(g.url + "/")
        rows = wait(lambda: [r for r in browser.find_elements("css selector", "#alerts tbody tr.pending")
                             if "ConsoleTestHot" in r.text], message="the pending alert never appeared")
        assert len(rows) == 2 and "GPU 0 is warm" in browser.find_element("id", "alerts").text
        row0 = next(r for r in rows if r.find_elements("css selector", "td")[2].text == "0")
        # By keyboard: the focus on the alert's button (kept there through refreshes), Enter fills the form
        # and moves the focus to the comment.
        button = row0.find_element("css selector", "button.silence-from")
        browser.execute_script("arguments[0].focus();", button)
        time.sleep(1.5)  # a refresh or two: the focus stays on the button
        browser.switch_to.active_element.send_keys(Keys.ENTER)
        assert browser.switch_to.active_element.get_attribute("id") == "silence-comment"
        matchers = browser.find_element("id", "silence-matchers").get_attribute("value")
        assert 'alertname="ConsoleTestHot"' in matchers and 'gpu="0"' in matchers
        browser.find_element("id", "silence-comment").send_keys("console test: GPU 0 is being serviced")
        browser.find_element("id", "silence-author").send_keys("on-call", Keys.ENTER)  # submits the form
        wait(lambda: "created" in browser.find_element("id", "silence-result").text,
             message=browser.find_element("id", "silence-result").text)
        wait(lambda: "console test" in browser.find_element("id", "silences").text)
        # The focus on GPU 1's button survives the redraw its alert's firing makes.
        def gpu_of_focus() -> list[str]:
            return json.loads(browser.switch_to.active_element.get_attribute("data-matchers") or "[]")
        browser.execute_script("[...document.querySelectorAll('#alerts button.silence-from')]"
                               ".find((b) => JSON.parse(b.dataset.matchers).includes('gpu=\"1\"')).focus();")
        assert 'gpu="1"' in gpu_of_focus()
        wait(lambda: browser.execute_script("return document.querySelectorAll('#alerts tbody tr.firing')"
                                            ".length === 2;"), timeout=30, message="the alerts never fired")
        assert 'gpu="1"' in gpu_of_focus(), "the redraw lost the keyboard focus"
        # GPU 1's alert fires and reaches the receiver; GPU 0's, silenced, never does.
        wait(lambda: any(a["labels"].get("gpu") == "1" for a in hook.alerts()),
             timeout=30, message="GPU 1's alert never reached the receiver")
        wait(lambda: "firing-critical" in (browser.find_element(
            "css selector", "article[data-gpu='1']").get_attribute("class") or ""))
        time.sleep(2.0)
        assert not any(a["labels"].get("gpu") == "0" for a in hook.alerts())
        # Expiring the silence from the page lets GPU 0's alert through.
        browser.find_element("css selector", "#silences button.expire").click()
        wait(lambda: any(a["labels"].get("gpu") == "0" for a in hook.alerts()),
             timeout=30, message="GPU 0's alert did not arrive after the silence expired")
        assert not errors(browser)


def test_behind_basic_auth_and_tls(browser: Any, tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    hashed = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(rounds=4)).decode()
    (tmp_path / "web.yml").write_text(f"""tls_server_config:
  cert_file: {pki.server_cert}
  key_file: {pki.server_key}
basic_auth_users:
  ops: '{hashed}'
""")
    auth = {"Authorization": "Basic " + base64.b64encode(b"ops:s3cret").decode()}
    with Gpumon(tmp_path, "--web-config", str(tmp_path / "web.yml"), tls=True, ready_headers=auth) as g:
        assert g.url.startswith("https://")
        browser.execute_cdp_cmd("Network.enable", {})
        browser.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": {}})
        browser.get(g.url + "/")
        assert not browser.find_elements("css selector", "article.card")  # no credentials, no console
        browser.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": auth})
        try:
            browser.get(g.url + "/")
            wait(lambda: refreshed(browser) >= 2, message="the console did not refresh over TLS with basic auth")
            assert chart(browser, 0, "activity")["points"] >= 1
            assert browser.find_element("id", "silence-form")  # basic auth on: writes allowed
            browser.get_log("browser")  # the first, unauthenticated load logged its 401
        finally:
            browser.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": {}})
