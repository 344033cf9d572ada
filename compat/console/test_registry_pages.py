"""The console's registry pages in a real headless Chromium, checked against what boto3 reads from
the same fleet: thing groups (static membership edited in the console, dynamic membership from a
query), certificates (revoked in the console), provisioning templates (disabled in the console)
and the audit log filtered by who made a change.
"""

import json

from conftest import CORES, screenshot, sign_in
from lichen_support import wait_for
from selenium.webdriver.common.by import By

TEMPLATE_BODY = {
    "Parameters": {"SerialNumber": {"Type": "String"}},
    "Resources": {"thing": {"Type": "AWS::IoT::Thing", "Properties": {"ThingName": {"Ref": "SerialNumber"}}}},
}


def texts(driver, table):
    return [r.text for r in driver.find_elements(By.CSS_SELECTOR, f"[data-testid='{table}'] tbody tr")]


def flash(driver, expected):
    """Waits for the page after a form POST to confirm with `expected` (the page before it may
    still show an earlier confirmation)."""

    def shown():
        try:
            return any(expected in f.text for f in driver.find_elements(By.CSS_SELECTOR, ".flash"))
        except Exception:  # the page changed under us: look again
            return False

    return wait_for(shown, 15, f"the confirmation {expected!r}")


def test_groups_certificates_templates_and_the_audit_log(rig, browser):
    iot = rig.fleet.client("iot")
    iot.create_thing_group(thingGroupName="line-1")
    iot.add_thing_to_thing_group(thingGroupName="line-1", thingName=CORES[0])
    iot.update_thing(thingName=CORES[1], attributePayload={"attributes": {"site": "berlin"}})
    iot.create_dynamic_thing_group(thingGroupName="berlin", queryString="attributes.site:berlin")
    spare = iot.create_keys_and_certificate(setAsActive=True)
    iot.create_provisioning_template(
        templateName="console-claim", templateBody=json.dumps(TEMPLATE_BODY), enabled=True,
        provisioningRoleArn="arn:aws:iam::123456789012:role/Provisioning",
    )

    d = browser()
    sign_in(d, rig, next_path="/groups")
    groups = {r.split()[0]: r for r in texts(d, "groups-table")}
    assert "static" in groups["line-1"] and "dynamic" in groups["berlin"], groups
    assert "attributes.site:berlin" in groups["berlin"]
    screenshot(d, "groups")

    # Dynamic: its member follows the query; it has no membership form.
    d.get(rig.console + "/groups/berlin")
    assert texts(d, "members-table") == [CORES[1]]
    assert not d.find_elements(By.CSS_SELECTOR, "[data-testid='add-member-form']")

    # Static: add a thing in the console; boto3 sees it.
    d.get(rig.console + "/groups/line-1")
    d.find_element(By.ID, "thing").send_keys(CORES[2])
    d.find_element(By.CSS_SELECTOR, "[data-testid='add-member-form'] button").click()
    flash(d, f"{CORES[2]} is now in line-1.")
    assert sorted(r.split()[0] for r in texts(d, "members-table")) == sorted([CORES[0], CORES[2]])
    members = iot.list_things_in_thing_group(thingGroupName="line-1")["things"]
    assert sorted(members) == sorted([CORES[0], CORES[2]])

    # Revoke the spare certificate; boto3 sees it revoked.
    d.get(rig.console + "/certificates")
    row = d.find_element(By.CSS_SELECTOR, f"tr[data-certificate='{spare['certificateId']}']")
    assert "ACTIVE" in row.text
    row.find_element(By.XPATH, ".//button[text()='Revoke']").click()
    flash(d, "is now REVOKED")
    desc = iot.describe_certificate(certificateId=spare["certificateId"])["certificateDescription"]
    assert desc["status"] == "REVOKED"
    # The cores' own certificates are listed with their things.
    cert_rows = texts(d, "certificates-table")
    assert all(any(t in r for r in cert_rows) for t in CORES), cert_rows

    # Disable the provisioning template (administrators only).
    template = next(r for r in d.find_elements(By.CSS_SELECTOR, "[data-testid='templates-table'] tbody tr")
                    if "console-claim" in r.text)
    template.find_element(By.XPATH, ".//button[text()='Disable']").click()
    flash(d, "Template console-claim is disabled.")
    assert iot.describe_provisioning_template(templateName="console-claim")["enabled"] is False
    screenshot(d, "certificates")

    # The audit log: the console's changes under the console user's name, filtered.
    d.get(rig.console + "/audit")
    d.find_element(By.ID, "who").send_keys("console:admin")
    d.find_element(By.CSS_SELECTOR, "form[role=search] button").click()
    wait_for(lambda: "who=console" in d.current_url, 10, "the filtered audit log")
    entries = texts(d, "audit-table")
    ops = [e for e in entries if "console:admin" in e]
    assert len(ops) == len(entries) and len(entries) >= 3, entries
    assert any("AddThingToThingGroup" in e for e in entries), entries
    assert any("UpdateCertificate" in e for e in entries), entries
    assert any("UpdateProvisioningTemplate" in e for e in entries), entries
    # Newest first.
    seqs = [int(e.split()[0]) for e in entries]
    assert seqs == sorted(seqs, reverse=True)
