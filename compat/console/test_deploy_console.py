"""Deployments and components in the fleet console, in a real headless Chromium against a real
`lichen fleet serve` and three real `lichen core` processes put in one thing group: publish a
component whose recipe has an inline lifecycle script (read from a file by the publish page),
deploy it to the group with a configuration merge after reading the preview of what each core
would run, and watch the rollout reach SUCCEEDED on each core on the deployment page while it
refreshes itself (no reload); each core then runs the component with the merged configuration,
and the component's page shows the three cores running it. Then a second version goes out and
the fleet-wide rollback returns every core to the first. A viewer sees no deploy or publish
form and is refused (403) when posting them anyway.

Fixtures (the fleet, the three cores, Chromium, sign-in, screenshots) are the console suite's
(conftest.py); screenshots of these pages go to LICHEN_CONSOLE_SCREENSHOTS when it is set.
"""

import json

from conftest import CORES, PHONE, csrf_of, post_from_page, screenshot, sign_in
from lichen_support import wait_for
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select

GROUP = "console-line"
APP = "com.example.ConsoleHello"
TERMINAL = {"SUCCEEDED", "FAILED", "TIMED_OUT", "REJECTED", "CANCELED", "REMOVED"}


BUCKET = "console-artifacts"


def recipe(version, greeting="hello", artifact=None):
    """An inline lifecycle script: prints its version and configured greeting (and, with an
    artifact in the fleet's S3 store, that file's first line), then stays up."""
    run = f"echo \"console-hello {version} {{configuration:/greeting}} $AWS_IOT_THING_NAME\"; "
    manifest = {"Platform": {"os": "linux"}}
    if artifact:
        run += "echo \"motd: $(head -n 1 {artifacts:path}/motd.txt)\"; "
        manifest["Artifacts"] = [{"URI": f"s3://{BUCKET}/{artifact}"}]
    manifest["Lifecycle"] = {"Run": run + "while true; do sleep 5; done"}
    return {
        "RecipeFormatVersion": "2020-01-25",
        "ComponentName": APP,
        "ComponentVersion": version,
        "ComponentDescription": "greets from the console suite",
        "ComponentPublisher": "console tests",
        "ComponentConfiguration": {"DefaultConfiguration": {"greeting": greeting}},
        "Manifests": [manifest],
    }


def rows(driver, table):
    return driver.find_elements(By.CSS_SELECTOR, f"[data-testid='{table}'] tbody tr")


def group_of_three(rig):
    """The three cores in one static thing group (once per module)."""
    iot = rig.fleet.client("iot")
    try:
        return iot.describe_thing_group(thingGroupName=GROUP)["thingGroupArn"]
    except iot.exceptions.ResourceNotFoundException:
        arn = iot.create_thing_group(thingGroupName=GROUP)["thingGroupArn"]
        for thing in CORES:
            iot.add_thing_to_thing_group(thingGroupName=GROUP, thingName=thing)
        return arn


def publish(d, rig, tmp_path, version, artifact=None):
    """Publishes `version` through the page, the recipe read from a file by its file input."""
    d.get(rig.console + "/components/publish")
    f = tmp_path / f"{APP}-{version}.json"
    f.write_text(json.dumps(recipe(version, artifact=artifact), indent=2))
    d.find_element(By.ID, "recipe-file").send_keys(str(f))
    wait_for(lambda: APP in d.find_element(By.ID, "recipe").get_attribute("value"), 10, "the recipe file read into the form")
    d.find_element(By.ID, "publish").click()
    flash = wait_for(lambda: d.find_elements(By.CSS_SELECTOR, ".flash"), 15, f"publish result: {d.page_source[-1500:]}")
    assert f"Published {APP} {version}: deployable." in flash[0].text, flash[0].text
    assert d.current_url.endswith(f"/console/components/{APP}/versions/{version}")
    assert "console-hello" in d.find_element(By.CSS_SELECTOR, "[data-testid='recipe']").text


def preview_and_deploy(d, rig, version, merge, shot=None):
    """Fills the form for the group, previews, checks the preview names each core with
    `version`, deploys; returns the deployment's id (the page is the deployment's)."""
    d.get(rig.console + "/deployments/new")
    assert d.find_elements(By.ID, "target_kind"), d.page_source[-3000:]
    Select(d.find_element(By.ID, "target_kind")).select_by_value("group")
    d.find_element(By.ID, "target_name").send_keys(GROUP)
    d.find_element(By.ID, "name").send_keys(f"hello {version}")
    d.find_element(By.ID, "component-0").send_keys(APP)
    d.find_element(By.ID, "version-0").send_keys(version)
    if merge:
        d.find_element(By.ID, "merge-0").send_keys(json.dumps(merge))
    d.find_element(By.ID, "preview").click()
    wait_for(lambda: rows(d, "preview-table"), 15, f"the preview: {d.page_source[-2000:]}")
    previewed = {r.get_attribute("data-thing"): r for r in rows(d, "preview-table")}
    assert sorted(previewed) == sorted(CORES), previewed.keys()
    for thing, r in previewed.items():
        assert r.get_attribute("data-conflicts") == "0", r.text
        item = r.find_element(By.CSS_SELECTOR, f"li[data-component='{APP}']")
        assert item.get_attribute("data-version") == version, (thing, item.text)
    if shot:
        screenshot(d, shot)
    deploy = d.find_element(By.ID, "deploy")
    assert deploy.text == f"Deploy to {len(CORES)} device(s)"
    deploy.click()
    wait_for(lambda: "/console/deployments/" in d.current_url and d.find_elements(By.ID, "rollout"), 15,
             f"the deployment page: {d.page_source[-1500:]}")
    return d.current_url.rsplit("/", 1)[1]


def watch_until_all(d, rig, status, timeout=180):
    """Waits, without reloading, until the live rollout table shows every core at `status`."""
    d.execute_script("window.__noReload = 'still here';")

    def settled():
        # Read in one script: the live refresh replaces the rows between two WebDriver calls.
        shown = dict(d.execute_script(
            "return Array.from(document.querySelectorAll(\"[data-testid='rollout-table'] tbody tr\"))"
            ".map(r => [r.dataset.thing, r.dataset.status]);"))
        if len(shown) == len(CORES) and all(s in TERMINAL for s in shown.values()):
            return shown
        return None

    why = lambda: "\n".join(c.log()[-1500:] for c in rig.cores.values())  # noqa: E731
    shown = wait_for(settled, timeout, f"the rollout to finish on every core (page: {d.page_source[-1500:]})\n{why()}")
    assert shown == {c: status for c in CORES}, shown
    # The table changed in place: the page never reloaded.
    assert d.execute_script("return window.__noReload") == "still here"
    assert d.find_element(By.ID, "rollout").get_attribute("data-refreshed")


def component_log(rig, thing):
    p = rig.cores[thing].root / "logs" / f"{APP}.log"
    return p.read_text(errors="replace") if p.exists() else ""


def test_publish_then_deploy_to_a_group_with_the_preview_and_watch_the_rollout_live(rig, browser, tmp_path):
    arn = group_of_three(rig)
    gg = rig.gg()
    d = browser()
    sign_in(d, rig)
    publish(d, rig, tmp_path, "1.0.0")
    screenshot(d, "component-version")

    deployment = preview_and_deploy(d, rig, "1.0.0", {"greeting": "hi-from-the-console"}, shot="deployment-preview")
    got = gg.get_deployment(deploymentId=deployment)
    assert (got["targetArn"], got["revisionId"], got["deploymentName"]) == (arn, "1", "hello 1.0.0")
    assert json.loads(got["components"][APP]["configurationUpdate"]["merge"]) == {"greeting": "hi-from-the-console"}
    watch_until_all(d, rig, "SUCCEEDED")
    # Read in one script each: the live refresh may replace these elements at any moment.
    succeeded = d.execute_script("return document.querySelector(\"[data-testid='count-succeeded']\").textContent")
    assert succeeded.strip() == f"{len(CORES)} / {len(CORES)}", succeeded
    assert d.execute_script("return !!document.querySelector(\"[data-testid='rollout-chart'] svg\")")
    screenshot(d, "deployment-rollout")
    # Each core runs it with the merged configuration, as the API also says.
    for thing in CORES:
        wait_for(lambda t=thing: f"console-hello 1.0.0 hi-from-the-console {t}" in component_log(rig, t), 30,
                 f"{thing} to run {APP} with the merged greeting")
        effs = gg.list_effective_deployments(coreDeviceThingName=thing)["effectiveDeployments"]
        assert [e["coreDeviceExecutionStatus"] for e in effs if e["deploymentId"] == deployment] == ["SUCCEEDED"]

    # The component's page lists the three cores as running 1.0.0 (from their fleet status).
    def running():
        d.get(f"{rig.console}/components/{APP}/versions/1.0.0")
        things = sorted(r.get_attribute("data-thing") for r in rows(d, "version-devices"))
        return things if things == sorted(CORES) else None

    wait_for(running, 60, "the version page to list the three cores")
    d.get(rig.console + "/components")
    row = d.find_element(By.CSS_SELECTOR, f"[data-testid='components-table'] tr[data-component='{APP}']")
    assert row.find_element(By.CSS_SELECTOR, "td[data-label='Devices running it']").text == str(len(CORES))
    screenshot(d, "components")
    d.get(rig.console + "/deployments")
    listed = [r.get_attribute("data-deployment") for r in rows(d, "deployments-table")]
    assert deployment in listed
    screenshot(d, "deployments")


def published(gg, version):
    arn = component_arn(gg)
    if arn is None:
        return False
    return version in [v["componentVersion"] for v in gg.list_component_versions(arn=arn)["componentVersions"]]


def last_run(rig, thing):
    """The last `console-hello <version> <greeting> <thing>` line the core's component printed."""
    lines = [line for line in component_log(rig, thing).splitlines() if "console-hello" in line]
    return lines[-1].split("console-hello ", 1)[1] if lines else None


def test_a_second_version_goes_out_and_the_fleet_wide_rollback_returns_every_core(rig, browser, tmp_path):
    arn = group_of_three(rig)
    gg = rig.gg()
    d = browser()
    sign_in(d, rig)
    if not published(gg, "1.0.0"):
        publish(d, rig, tmp_path, "1.0.0")
    # 2.0.0 brings an artifact from the fleet's S3 store; the version page shows it.
    s3 = rig.fleet.client("s3")
    s3.create_bucket(Bucket=BUCKET)
    key = f"{APP}/2.0.0/motd.txt"
    s3.put_object(Bucket=BUCKET, Key=key, Body=b"good morning from the fleet's store\n")
    publish(d, rig, tmp_path, "2.0.0", artifact=key)
    arts = rows(d, "artifacts-table")
    assert len(arts) == 1, d.page_source[-2000:]
    text = arts[0].text
    assert f"s3://{BUCKET}/{key}" in text and "matches the stored object" in text and "36 B" in text, text
    screenshot(d, "component-version-artifact")
    if not gg.list_deployments(targetArn=arn)["deployments"]:
        preview_and_deploy(d, rig, "1.0.0", None)
        watch_until_all(d, rig, "SUCCEEDED")
    second = preview_and_deploy(d, rig, "2.0.0", None)
    watch_until_all(d, rig, "SUCCEEDED")
    for thing in CORES:
        wait_for(lambda t=thing: (last_run(rig, t) or "").startswith("2.0.0 "), 30,
                 f"{thing} to run 2.0.0 (last: {last_run(rig, thing)})")
        wait_for(lambda t=thing: "motd: good morning from the fleet's store" in component_log(rig, t), 30,
                 f"{thing} to print its artifact's line")

    # Roll the fleet back (the page asks first; the test answers yes).
    d.execute_script("window.confirm = function () { return true; };")
    d.find_element(By.ID, "rollback").click()
    # The page before the click has a flash of its own: wait for the new page's, read in one script.
    flash = wait_for(
        lambda: (t := d.execute_script("const f = document.querySelector('.flash'); return f ? f.textContent : '';"))
        and "Rolling back" in t and t, 15, f"rollback result: {d.page_source[-1500:]}")
    assert "is marked FAILED" in flash, flash
    rollback = d.current_url.rsplit("/", 1)[1]
    assert rollback != second
    got = gg.get_deployment(deploymentId=rollback)
    assert got["components"][APP]["componentVersion"] == "1.0.0"
    assert got["tags"]["lichen:rollbackOf"] == second
    assert gg.get_deployment(deploymentId=second)["deploymentStatus"] == "FAILED"
    watch_until_all(d, rig, "SUCCEEDED")
    screenshot(d, "deployment-rollback")
    for thing in CORES:
        wait_for(lambda t=thing: (last_run(rig, t) or "").startswith("1.0.0 "), 60, f"{thing} to run 1.0.0 again")


def test_a_viewer_cannot_deploy_or_publish(rig, browser):
    group_of_three(rig)
    gg = rig.gg()
    admin = browser()
    sign_in(admin, rig)
    admin.get(rig.console + "/users")
    admin.find_element(By.ID, "new-name").send_keys("dora")
    admin.find_element(By.ID, "new-password").send_keys("viewer-password-2")
    Select(admin.find_element(By.ID, "new-role")).select_by_value("viewer")
    admin.find_element(By.ID, "create-user").click()
    assert "User dora (viewer) added." in wait_for(
        lambda: admin.find_elements(By.CSS_SELECTOR, ".flash"), 15, "the user to be added")[0].text

    d = browser()
    sign_in(d, rig, user="dora", password="viewer-password-2")
    d.get(rig.console + "/deployments")
    assert not d.find_elements(By.ID, "new-deployment")
    d.get(rig.console + "/components")
    assert not d.find_elements(By.ID, "publish-component")
    for path in ("/deployments", "/components") + tuple(
            f"/deployments/{x['deploymentId']}" for x in gg.list_deployments()["deployments"]):
        d.get(rig.console + path)
        forms = [f.get_attribute("action") for f in d.find_elements(By.CSS_SELECTOR, "form[method=post]")]
        assert all(a.endswith("/console/logout") for a in forms), f"{path}: {forms}"
    for path in ("/deployments/new", "/components/publish"):
        d.get(rig.console + path)
        assert "Not allowed" in d.title, (path, d.title)
    before = gg.list_deployments(historyFilter="ALL")["deployments"]
    token = csrf_of(d)
    fields = {"csrf": token, "target_kind": "group", "target_name": GROUP, "component.0": APP, "version.0": "1.0.0"}
    assert post_from_page(d, "/console/deployments/preview", fields) == 403
    group_arn = rig.fleet.client("iot").describe_thing_group(thingGroupName=GROUP)["thingGroupArn"]
    request = json.dumps({"targetArn": group_arn, "components": {APP: {"componentVersion": "1.0.0"}}})
    assert post_from_page(d, "/console/deployments", {"csrf": token, "request": request, "digest": "0"}) == 403
    assert post_from_page(d, "/console/components/publish", {"csrf": token, "recipe": json.dumps(recipe("9.0.0"))}) == 403
    for x in before:
        for action in ("cancel", "rollback"):
            assert post_from_page(d, f"/console/deployments/{x['deploymentId']}/{action}", {"csrf": token}) == 403
    assert gg.list_deployments(historyFilter="ALL")["deployments"] == before
    assert not published(gg, "9.0.0")


def component_arn(gg):
    for c in gg.list_components()["components"]:
        if c["componentName"] == APP:
            return c["arn"]
    return None


def test_the_deployment_and_component_pages_fit_a_phone(rig, browser, tmp_path):
    arn = group_of_three(rig)
    gg = rig.gg()
    d = browser(PHONE)
    sign_in(d, rig)
    if not published(gg, "1.0.0"):
        publish(d, rig, tmp_path, "1.0.0")
    if not gg.list_deployments(targetArn=arn)["deployments"]:
        preview_and_deploy(d, rig, "1.0.0", None)
    latest = gg.list_deployments(targetArn=arn)["deployments"][0]["deploymentId"]
    for path in ("/deployments", f"/deployments/{latest}", "/deployments/new", "/components",
                 f"/components/{APP}", f"/components/{APP}/versions/1.0.0", "/components/publish"):
        d.get(rig.console + path)
        width = d.execute_script("return document.documentElement.scrollWidth")
        assert width <= PHONE[0], f"{path} is {width} px wide on a {PHONE[0]} px screen"
    d.get(f"{rig.console}/deployments/{latest}")
    screenshot(d, "deployment-phone")
