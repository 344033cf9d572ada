"""The fleet console in a real headless Chromium (Debian's `chromium` driven through
/usr/bin/chromedriver with selenium): a real `lichen fleet serve` and three real `lichen core`
processes enrolled with it (the observability suite's fixtures), signed in as the administrator
whose password `lichen fleet serve` writes to `<root>/admin/console-password`.

Screenshots: set LICHEN_CONSOLE_SCREENSHOTS=docs/console (relative to the repository, or an
absolute folder) and the tests save PNGs of the main pages there; without it nothing is written.

Every process started here is stopped at teardown; everything binds 127.0.0.1.
"""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent / "fleet"))
sys.path.insert(0, str(HERE.parent / "ipc"))
sys.path.insert(0, str(HERE))

from lichen_support import lichen_bin, wait_for  # noqa: E402

_spec = importlib.util.spec_from_file_location("obs_conftest_for_console", HERE.parent / "observability" / "conftest.py")
_obs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_obs)

ROLE_ALIAS = "GreengrassCoreTokenExchangeRoleAlias"
ROLE_ARN = "arn:aws:iam::123456789012:role/GreengrassConsoleTest"
CORES = ("console-core-1", "console-core-2", "console-core-3")
CHROMIUM = os.environ.get("LICHEN_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("LICHEN_CHROMEDRIVER", "/usr/bin/chromedriver")
DESKTOP = (1280, 900)
PHONE = (390, 844)


def setup_credentials(fleet, cores, tmp):
    """A role alias the cores may assume, allowed to write their logs (as on AWS)."""
    iot = fleet.client("iot")
    iot.create_role_alias(roleAlias=ROLE_ALIAS, roleArn=ROLE_ARN)
    iot.create_policy(policyName="console-assume-role", policyDocument=json.dumps({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "iot:AssumeRoleWithCertificate",
                       "Resource": f"arn:aws:iot:*:*:rolealias/{ROLE_ALIAS}"}],
    }))
    for c in cores:
        iot.attach_policy(policyName="console-assume-role", target=c.enrolled["certificateArn"])
    policy = tmp / "role-policy.json"
    policy.write_text(json.dumps({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow",
                       "Action": ["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents",
                                  "logs:DescribeLogStreams"],
                       "Resource": "arn:aws:logs:*:*:log-group:/aws/greengrass/*"}],
    }))
    p = subprocess.run([lichen_bin(), "fleet", "role", "put", "--root", str(fleet.root), "--role-arn", ROLE_ARN,
                        "--policy-file", str(policy)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr


def core_status(gg, thing):
    try:
        return gg.get_core_device(coreDeviceThingName=thing)["status"]
    except gg.exceptions.ResourceNotFoundException:
        return None


class Rig:
    """The fleet, its cores (by thing name) and the administrator's console password."""

    def __init__(self, fleet, cores):
        self.fleet, self.cores = fleet, cores
        self.console = fleet.api + "/console"
        self.admin_password = wait_for(
            lambda: (fleet.root / "admin" / "console-password").exists()
            and (fleet.root / "admin" / "console-password").read_text().strip(),
            30, "the console's administrator password",
        )

    def gg(self):
        return self.fleet.client("greengrassv2")


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    """`lichen fleet serve` and three enrolled, running, HEALTHY cores for a module's tests."""
    base = tmp_path_factory.mktemp("console")
    root = base / "fleet" / "root"
    root.parent.mkdir()
    fleet = _obs.ObsFleet(root, ["--device-stale-after", "600"]).start()
    cores = {}
    try:
        cred = fleet.endpoints["credentials"].removeprefix("https://")
        for thing in CORES:
            work = base / thing
            work.mkdir()
            cores[thing] = _obs.Core(fleet, thing, work, {"iotCredEndpoint": cred, "iotRoleAlias": ROLE_ALIAS})
        setup_credentials(fleet, cores.values(), base)
        for c in cores.values():
            c.start()
        gg = fleet.client("greengrassv2")
        for thing in CORES:
            wait_for(lambda t=thing: core_status(gg, t) == "HEALTHY", 90, f"{thing} HEALTHY\n{fleet.output()}")
        yield Rig(fleet, cores)
    finally:
        for c in cores.values():
            c.stop()
        fleet.stop()


def _chrome(size):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        reason = f"no Chromium at {CHROMIUM} or chromedriver at {CHROMEDRIVER} (./scripts/test installs them)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
              f"--window-size={size[0]},{size[1]}", "--force-device-scale-factor=1"):
        opts.add_argument(a)
    d = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    d.set_window_size(*size)
    d.implicitly_wait(0)
    return d


@pytest.fixture
def browser():
    """A factory of headless Chromium sessions (desktop size unless given), quit at teardown."""
    started = []

    def make(size=DESKTOP):
        d = _chrome(size)
        started.append(d)
        return d

    yield make
    for d in started:
        d.quit()


def sign_in(driver, rig, user="admin", password=None, next_path=""):
    """Signs in through the sign-in form; returns once the overview (or `next_path`) is shown."""
    from selenium.webdriver.common.by import By

    driver.get(rig.console + "/login" + (f"?next=/console{next_path}" if next_path else ""))
    driver.find_element(By.ID, "username").send_keys(user)
    driver.find_element(By.ID, "password").send_keys(password or rig.admin_password)
    driver.find_element(By.ID, "login").click()
    wait_for(lambda: "/console/login" not in driver.current_url, 15, f"sign-in as {user}: {driver.page_source[-800:]}")


def screenshot(driver, name):
    """Saves `<LICHEN_CONSOLE_SCREENSHOTS>/<name>.png` when that variable is set (full page height)."""
    folder = os.environ.get("LICHEN_CONSOLE_SCREENSHOTS")
    if not folder:
        return
    out = Path(folder)
    if not out.is_absolute():
        out = REPO / out
    out.mkdir(parents=True, exist_ok=True)
    width = driver.get_window_size()["width"]
    height = driver.execute_script("return Math.min(document.documentElement.scrollHeight, 4000)")
    original = driver.get_window_size()
    # The window's outer size includes some browser chrome even headless: leave room for it.
    driver.set_window_size(width, max(height + 160, original["height"]))
    try:
        driver.save_screenshot(str(out / f"{name}.png"))
    finally:
        driver.set_window_size(original["width"], original["height"])


def post_from_page(driver, path, fields):
    """POSTs a urlencoded form from the page's own origin with its session (fetch); the status."""
    return driver.execute_async_script(
        """
        const [path, fields, done] = arguments;
        fetch(path, {method: 'POST', credentials: 'same-origin', redirect: 'manual',
                     headers: {'content-type': 'application/x-www-form-urlencoded'},
                     body: new URLSearchParams(fields).toString()})
          .then(r => done(r.status)).catch(e => done(String(e)));
        """,
        path, fields,
    )


def csrf_of(driver):
    """The session's CSRF token, from the sign-out form every page carries."""
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, "form[action='/console/logout'] input[name=csrf]").get_attribute("value")
