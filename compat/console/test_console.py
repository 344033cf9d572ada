"""The fleet console in a real headless Chromium against a real fleet and three real cores: sign in,
see the three cores, read a device's components, log lines and CPU/memory chart, edit a shadow's
desired state and see it reach the core (read back through the core's own IPC shadow API by an
unmodified awsiotsdk component), watch a core killed with -9 turn UNHEALTHY/OFFLINE on the
overview without reloading it, and check that a viewer sees no edit form and is refused (403)
when posting one anyway. Desktop (1280x900) and phone (390x844) widths.
"""

import json

from conftest import (
    CORES,
    PHONE,
    csrf_of,
    post_from_page,
    screenshot,
    sign_in,
)
from core_support import DRIVER, PYTHON, Driver
from lichen_support import wait_for
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select

CORE = CORES[0]
CHATTY = "com.example.ConsoleChatty"
APP = "test.ConsoleShadowApp"
SHADOW = "aws.greengrass.ShadowManager"
EMITTER = "aws.greengrass.telemetry.NucleusEmitter"


def rows(driver, table):
    return driver.find_elements(By.CSS_SELECTOR, f"[data-testid='{table}'] tbody tr")


def live(driver, selector, what="text"):
    """An element's text or data-* value read in one script call: live parts of a page are
    replaced every few seconds, so an element found earlier may be gone by the next call."""
    return driver.execute_script(
        "const e = document.querySelector(arguments[0]);"
        "return e ? (arguments[1] === 'text' ? e.innerText : e.getAttribute(arguments[1])) : null;",
        selector, what,
    )


def live_rows(driver, table, key):
    """{row's `key` attribute: its text} of a table, read in one script call."""
    return driver.execute_script(
        "const out = {}; document.querySelectorAll(`[data-testid='${arguments[0]}'] tbody tr`)"
        ".forEach(r => { out[r.getAttribute(arguments[1])] = r.innerText; }); return out;",
        table, key,
    )


def deploy_to_core(rig):
    """On the first core: a component that logs, the log manager, shadow sync of the classic
    shadow, telemetry to the fleet, and an IPC driver allowed the core's own shadow."""
    core = rig.cores[CORE]
    recipes, artifacts = core.work / "recipes", core.work / "artifacts"
    recipes.mkdir(exist_ok=True)
    run = "i=0; while true; do i=$((i+1)); echo \"console chatty line $i\"; sleep 0.5; done"
    (recipes / f"{CHATTY}.json").write_text(json.dumps({
        "RecipeFormatVersion": "2020-01-25", "ComponentName": CHATTY, "ComponentVersion": "1.0.0",
        "Manifests": [{"Platform": {"os": "*"}, "Lifecycle": {"Run": run}}],
    }))
    box = core.work / "box"
    box.mkdir(exist_ok=True)
    art = artifacts / APP / "1.0.0"
    art.mkdir(parents=True, exist_ok=True)
    (art / "driver.py").write_text(DRIVER)
    (recipes / f"{APP}.json").write_text(json.dumps({
        "RecipeFormatVersion": "2020-01-25", "ComponentName": APP, "ComponentVersion": "1.0.0",
        "ComponentConfiguration": {"DefaultConfiguration": {"accessControl": {SHADOW: {
            f"{APP}:shadow:1": {
                "operations": ["aws.greengrass#GetThingShadow", "aws.greengrass#UpdateThingShadow"],
                "resources": [f"$aws/things/{CORE}/shadow"],
            }}}}},
        "Manifests": [{"Platform": {"os": "*"}, "Lifecycle": {"Run": f"{PYTHON} -u {{artifacts:path}}/driver.py {box}"}}],
    }))
    config = {
        "aws.greengrass.LogManager": {"MERGE": {
            "periodicUploadIntervalSec": 1,
            "logsUploaderConfiguration": {
                "systemLogsConfiguration": {"uploadToCloudWatch": "true", "minimumLogLevel": "INFO"},
                "componentLogsConfigurationMap": {CHATTY: {"minimumLogLevel": "INFO"}},
            },
            "lichen": {"logsEndpoint": rig.fleet.api},
        }},
        SHADOW: {"MERGE": {
            "synchronize": {"coreThing": {"classic": True}, "direction": "betweenDeviceAndCloud"},
            "strategy": {"type": "realTime"},
        }},
        EMITTER: {"MERGE": {
            "telemetryPublishIntervalMs": 1000,
            "mqttTopic": "$aws/things/{iot:thingName}/lichen/telemetry",
        }},
    }
    core.cli("deployment", "create", "--wait", "--json", "--recipe-dir", str(recipes), "--artifact-dir", str(artifacts),
             "--merge", f"{CHATTY}=1.0.0", "--merge", f"{APP}=1.0.0", "--merge", "aws.greengrass.LogManager=2.3.7",
             "--merge", f"{SHADOW}=2.3.9", "--merge", f"{EMITTER}=1.0.9", "--update-config", json.dumps(config))
    wait_for(lambda: (box / "ready").exists(), 60, f"{APP} to start\n{core.log()[-3000:]}")
    return Driver(APP, box)


def local_desired(app):
    """The core's classic shadow's desired state, read through IPC GetThingShadow."""
    r = app.run(
        f"result = attempt(lambda: json.loads(client.get_thing_shadow(thing_name={CORE!r}, shadow_name='').payload))"
    )
    return r["ok"]["state"].get("desired") if "ok" in r else None


def test_sign_in_shows_the_three_cores_with_a_secure_session_cookie(rig, browser):
    d = browser()
    d.get(rig.console)
    assert "/console/login" in d.current_url, "an anonymous visit goes to the sign-in page"
    sign_in(d, rig)
    cookie = next(c for c in d.get_cookies() if c["name"] == "lichen_console")
    # Chromium keeps and sends a Secure cookie to http://127.0.0.1 (a secure context).
    assert cookie["secure"] and cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/console"
    wait_for(lambda: len(live_rows(d, "devices-table", "data-thing")) == 3, 15, "three devices on the overview")
    seen = {t: live(d, f"tr[data-thing='{t}']", "data-status") for t in CORES}
    assert seen == {t: "HEALTHY" for t in CORES}, seen
    assert live(d, "[data-testid='count-healthy']") == "3"
    # Landmarks and the skip link.
    assert d.find_element(By.CSS_SELECTOR, "nav[aria-label='Main']")
    assert d.find_element(By.CSS_SELECTOR, "a.skip").get_attribute("href").endswith("#main")
    screenshot(d, "overview")
    d.find_element(By.CSS_SELECTOR, "a[href='/console/devices']").click()
    wait_for(lambda: len(live_rows(d, "devices-table", "data-thing")) == 3, 15, "three devices on the devices page")
    screenshot(d, "devices")


def test_device_page_shows_components_logs_and_charts_and_a_shadow_edit_reaches_the_core(rig, browser):
    app = deploy_to_core(rig)
    d = browser()
    sign_in(d, rig, next_path=f"/devices/{CORE}")
    assert d.current_url.endswith(f"/console/devices/{CORE}")

    # The components the core reports, with versions and states (refreshed live).
    def components():
        return live_rows(d, "components-table", "data-component")

    wait_for(lambda: CHATTY in components() and "RUNNING" in components()[CHATTY], 60,
             f"{CHATTY} RUNNING on the device page\n{d.page_source[-2000:]}")
    assert "1.0.0" in components()[CHATTY]
    # A log line the component wrote, uploaded by the core's log manager.
    wait_for(lambda: "console chatty line" in (live(d, "[data-testid='device-logs']") or ""),
             90, f"a log line on the device page\n{rig.cores[CORE].log()[-2000:]}")
    # CPU and memory charts from the core's telemetry, drawn as SVG.
    wait_for(lambda: live(d, "[data-testid='cpu-chart'] svg", "width") and live(d, "[data-testid='mem-chart'] svg", "width"),
             60, "the CPU and memory charts")

    # Edit the desired state; it reaches the core through shadow sync.
    d.refresh()
    area = d.find_element(By.ID, "desired-classic")
    area.clear()
    area.send_keys(json.dumps({"led": "green", "interval": 5}))
    d.find_element(By.CSS_SELECTOR, "[data-testid='shadow-form-classic'] button[type=submit]").click()
    flash = wait_for(lambda: d.find_elements(By.CSS_SELECTOR, ".flash"), 15, "the confirmation")[0]
    assert "desired state is updated" in flash.text, flash.text
    wait_for(lambda: local_desired(app) == {"led": "green", "interval": 5}, 60,
             f"the desired state at the core\n{rig.cores[CORE].log()[-2000:]}")
    screenshot(d, "device")

    # Replacing it again drops what the new document leaves out.
    d.refresh()
    area = d.find_element(By.ID, "desired-classic")
    area.clear()
    area.send_keys(json.dumps({"led": "red"}))
    d.find_element(By.CSS_SELECTOR, "[data-testid='shadow-form-classic'] button[type=submit]").click()
    wait_for(lambda: local_desired(app) == {"led": "red"}, 60, "the replaced desired state at the core")


def test_pages_fit_a_phone(rig, browser):
    d = browser(PHONE)
    sign_in(d, rig)
    wait_for(lambda: len(live_rows(d, "devices-table", "data-thing")) == 3, 15, "three devices")
    # Tables become stacked cards: no sideways scrolling, rows as blocks, big touch targets.
    assert d.execute_script("return document.documentElement.scrollWidth") <= PHONE[0]
    assert d.execute_script(
        "return getComputedStyle(document.querySelector(\"[data-testid='devices-table'] tbody tr\")).display") == "block"
    link = d.find_element(By.CSS_SELECTOR, "a[href='/console/devices']")
    assert link.size["height"] >= 44, link.size
    screenshot(d, "overview-phone")
    d.get(f"{rig.console}/devices/{CORE}")
    assert d.execute_script("return document.documentElement.scrollWidth") <= PHONE[0]
    screenshot(d, "device-phone")


def test_a_viewer_sees_no_edit_form_and_is_refused_when_posting(rig, browser):
    admin = browser()
    sign_in(admin, rig)
    admin.get(rig.console + "/users")
    admin.find_element(By.ID, "new-name").send_keys("vera")
    admin.find_element(By.ID, "new-password").send_keys("viewer-password-1")
    Select(admin.find_element(By.ID, "new-role")).select_by_value("viewer")
    admin.find_element(By.ID, "create-user").click()
    assert "User vera (viewer) added." in wait_for(lambda: admin.find_elements(By.CSS_SELECTOR, ".flash"), 15, "flash")[0].text
    screenshot(admin, "users")

    d = browser()
    sign_in(d, rig, user="vera", password="viewer-password-1")
    assert not d.find_elements(By.CSS_SELECTOR, "a[href='/console/users']")
    for path in (f"/devices/{CORE}", "/deployments", "/groups", "/certificates"):
        d.get(rig.console + path)
        forms = [f.get_attribute("action") for f in d.find_elements(By.CSS_SELECTOR, "form[method=post]")]
        assert all(a.endswith("/console/logout") for a in forms), f"{path}: {forms}"
    token = csrf_of(d)
    status = post_from_page(d, f"/console/devices/{CORE}/shadow", {"csrf": token, "desired": '{"led":"off"}'})
    assert status == 403, status
    status = post_from_page(d, "/console/deployments", {"csrf": token, "targetArn": "x"})
    assert status == 403, status
    status = post_from_page(d, "/console/users", {"csrf": token, "name": "evil", "password": "password-123", "role": "admin"})
    assert status == 403, status
    # Nothing changed: the shadow still holds the operator's last value.
    doc = json.loads(rig.fleet.client("iot-data").get_thing_shadow(thingName=CORE)["payload"].read())
    assert doc["state"]["desired"] != {"led": "off"}


def test_a_core_killed_with_minus_9_turns_unhealthy_on_the_overview_without_a_reload(rig, browser):
    victim = CORES[2]
    d = browser()
    sign_in(d, rig)
    row = f"[data-testid='devices-table'] tr[data-thing='{victim}']"
    wait_for(lambda: live(d, row, "data-status") == "HEALTHY", 15, "the victim's row, HEALTHY")
    d.execute_script("window.__notReloaded = true")
    rig.cores[victim].kill9()
    try:
        wait_for(lambda: live(d, row, "data-status") == "UNHEALTHY", 60, f"{victim} UNHEALTHY on the overview")
        text = live(d, row)
        assert "DISCONNECTED" in text and "OFFLINE" in text, text
        assert d.execute_script("return window.__notReloaded === true"), "the page was reloaded"
        assert live(d, "[data-testid='count-unhealthy']") == "1"
        # The health chart has samples (one every few seconds).
        wait_for(lambda: live(d, "[data-testid='health-chart'] svg", "width"), 30, "the health chart")
        screenshot(d, "overview-unhealthy")
        d.get(f"{rig.console}/devices/{victim}")
        health = d.find_element(By.CSS_SELECTOR, "[data-testid='device-health']").text
        assert "UNHEALTHY" in health and "DISCONNECTED" in health, health
        d.get(f"{rig.console}/audit")
        assert rows(d, "audit-table"), "the fleet's audited changes (enrolment, role alias, policies)"
        screenshot(d, "audit")
    finally:
        rig.cores[victim].start()
    gg = rig.gg()
    wait_for(lambda: gg.get_core_device(coreDeviceThingName=victim)["status"] == "HEALTHY", 90, f"{victim} HEALTHY again")
