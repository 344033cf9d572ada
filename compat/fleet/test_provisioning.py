"""Fleet provisioning by claim with the unmodified awsiotsdk `iotidentity` client: a device
connected with a claim certificate (whose policy allows the provisioning topics only) gets a
certificate — a new key pair, or one for its own CSR — and RegisterThing applies a provisioning
template made with boto3; the device then connects with its new certificate as the new thing.
"""

import json
import uuid
from concurrent.futures import Future

import pytest
from awscrt import mqtt
from awsiot import iotidentity
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from fleet_devices import DEVICE_POLICY, TIMEOUT, Device, Session3, Session5

TEMPLATE = "sensors"

TEMPLATE_BODY = {
    "Parameters": {"SerialNumber": {"Type": "String"}, "Site": {"Type": "String", "Default": "north"}},
    "Resources": {
        "thing": {
            "Type": "AWS::IoT::Thing",
            "Properties": {
                "ThingName": {"Fn::Join": ["", ["sensor-", {"Ref": "SerialNumber"}]]},
                "AttributePayload": {"serial": {"Ref": "SerialNumber"}},
                "ThingGroups": ["sensors"],
            },
        },
        "certificate": {
            "Type": "AWS::IoT::Certificate",
            "Properties": {"CertificateId": {"Ref": "AWS::IoT::Certificate::Id"}, "Status": "Active"},
        },
        "policy": {"Type": "AWS::IoT::Policy", "Properties": {"PolicyName": "provisioned-device"}},
    },
    "DeviceConfiguration": {"Site": {"Ref": "Site"}},
}


def claim_policy():
    topics = ["$aws/certificates/create/*", "$aws/certificates/create-from-csr/*", f"$aws/provisioning-templates/{TEMPLATE}/provision/*"]
    return {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Action": "iot:Connect", "Resource": "arn:aws:iot:*:*:client/*"},
            {"Effect": "Allow", "Action": ["iot:Publish", "iot:Receive"], "Resource": [f"arn:aws:iot:*:*:topic/{t}" for t in topics]},
            {"Effect": "Allow", "Action": "iot:Subscribe", "Resource": [f"arn:aws:iot:*:*:topicfilter/{t}" for t in topics]},
        ],
    }


@pytest.fixture
def claim(fleet, iot, tmp_path):
    """The template, the policy it attaches, and a claim certificate attached to no thing."""
    iot.create_policy(policyName="provisioned-device", policyDocument=json.dumps(DEVICE_POLICY))
    iot.create_thing_group(thingGroupName="sensors")
    iot.create_provisioning_template(
        templateName=TEMPLATE,
        templateBody=json.dumps(TEMPLATE_BODY),
        provisioningRoleArn="arn:aws:iam::123456789012:role/fleet-provisioning",
        enabled=True,
    )
    keys = iot.create_keys_and_certificate(setAsActive=True)
    iot.create_policy(policyName="claim", policyDocument=json.dumps(claim_policy()))
    iot.attach_policy(policyName="claim", target=keys["certificateArn"])
    cert, key = tmp_path / "claim.pem.crt", tmp_path / "claim.pem.key"
    cert.write_text(keys["certificatePem"])
    key.write_text(keys["keyPair"]["PrivateKey"])
    return Device.existing(fleet, "claim", cert, key)


def subscribed(subscribe, request):
    """Subscribes with an iotidentity subscribe_to_* call; returns the future of the first message."""
    got = Future()
    future, _ = subscribe(request=request, qos=mqtt.QoS.AT_LEAST_ONCE, callback=lambda r: got.done() or got.set_result(r))
    future.result(TIMEOUT)
    return got


def register(identity, token, parameters):
    accepted = subscribed(identity.subscribe_to_register_thing_accepted, iotidentity.RegisterThingSubscriptionRequest(template_name=TEMPLATE))
    rejected = subscribed(identity.subscribe_to_register_thing_rejected, iotidentity.RegisterThingSubscriptionRequest(template_name=TEMPLATE))
    identity.publish_register_thing(
        iotidentity.RegisterThingRequest(template_name=TEMPLATE, certificate_ownership_token=token, parameters=parameters),
        mqtt.QoS.AT_LEAST_ONCE,
    ).result(TIMEOUT)
    return accepted, rejected


def first(*futures):
    from concurrent.futures import FIRST_COMPLETED, wait

    done, _ = wait(futures, TIMEOUT, return_when=FIRST_COMPLETED)
    assert done, "no reply from the fleet"
    return futures.index(next(iter(done))), next(iter(done)).result()


def test_iotidentity_provisions_a_device_by_claim(fleet, iot, claim, tmp_path):
    s = Session3(claim, client_id=f"claim-{uuid.uuid4().hex[:8]}")
    try:
        assert s.outcome is True, s.outcome
        identity = iotidentity.IotIdentityClient(s.connection)
        created = subscribed(identity.subscribe_to_create_keys_and_certificate_accepted, iotidentity.CreateKeysAndCertificateSubscriptionRequest())
        refused = subscribed(identity.subscribe_to_create_keys_and_certificate_rejected, iotidentity.CreateKeysAndCertificateSubscriptionRequest())
        identity.publish_create_keys_and_certificate(iotidentity.CreateKeysAndCertificateRequest(), mqtt.QoS.AT_LEAST_ONCE).result(TIMEOUT)
        which, keys = first(created, refused)
        assert which == 0, f"CreateKeysAndCertificate rejected: {keys.error_message}"
        assert iot.describe_certificate(certificateId=keys.certificate_id)["certificateDescription"]["status"] == "PENDING_ACTIVATION"

        accepted, rejected = register(identity, keys.certificate_ownership_token, {"SerialNumber": "0042"})
        which, reply = first(accepted, rejected)
        assert which == 0, f"RegisterThing rejected: {reply.error_code}: {reply.error_message}\n{fleet.output()}"
        assert reply.thing_name == "sensor-0042"
        assert reply.device_configuration == {"Site": "north"}
    finally:
        s.stop()

    thing = iot.describe_thing(thingName="sensor-0042")
    assert thing["attributes"] == {"serial": "0042"}
    assert iot.describe_certificate(certificateId=keys.certificate_id)["certificateDescription"]["status"] == "ACTIVE"
    groups = iot.list_thing_groups_for_thing(thingName="sensor-0042")["thingGroups"]
    assert [g["groupName"] for g in groups] == ["sensors"]

    cert, key = tmp_path / "new.pem.crt", tmp_path / "new.pem.key"
    cert.write_text(keys.certificate_pem)
    key.write_text(keys.private_key)
    device = Session5(Device.existing(fleet, "sensor-0042", cert, key))
    try:
        assert device.outcome is True, device.outcome
        topic = "devices/sensor-0042/hello"
        assert device.subscribe(topic) == [1]
        assert device.publish(topic, "provisioned") < 0x80
        assert device.received.result(TIMEOUT) == [topic, "provisioned"]
    finally:
        device.stop()


def test_iotidentity_certificate_from_csr_and_a_refused_token(fleet, iot, claim):
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sensor-0043")]))
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
        .decode()
    )
    s = Session3(claim, client_id=f"claim-{uuid.uuid4().hex[:8]}")
    try:
        assert s.outcome is True, s.outcome
        identity = iotidentity.IotIdentityClient(s.connection)

        accepted, rejected = register(identity, "not-a-token", {"SerialNumber": "0043"})
        which, reply = first(accepted, rejected)
        assert which == 1, "RegisterThing accepted an unknown ownership token"
        assert reply.status_code == 400

        created = subscribed(identity.subscribe_to_create_certificate_from_csr_accepted, iotidentity.CreateCertificateFromCsrSubscriptionRequest())
        refused = subscribed(identity.subscribe_to_create_certificate_from_csr_rejected, iotidentity.CreateCertificateFromCsrSubscriptionRequest())
        identity.publish_create_certificate_from_csr(
            iotidentity.CreateCertificateFromCsrRequest(certificate_signing_request=csr), mqtt.QoS.AT_LEAST_ONCE
        ).result(TIMEOUT)
        which, issued = first(created, refused)
        assert which == 0, f"CreateCertificateFromCsr rejected: {issued.error_message}"
        pem = x509.load_pem_x509_certificate(issued.certificate_pem.encode())
        assert pem.public_key().public_numbers() == key.public_key().public_numbers()

        accepted, rejected = register(identity, issued.certificate_ownership_token, {"SerialNumber": "0043", "Site": "south"})
        which, reply = first(accepted, rejected)
        assert which == 0, f"RegisterThing rejected: {reply.error_code}: {reply.error_message}"
        assert reply.thing_name == "sensor-0043"
        assert reply.device_configuration == {"Site": "south"}
    finally:
        s.stop()


def test_a_template_with_a_pre_provisioning_hook_is_refused_not_run_ungated(fleet, iot, claim):
    iot.update_provisioning_template(
        templateName=TEMPLATE,
        preProvisioningHook={"targetArn": "arn:aws:lambda:us-east-1:123456789012:function:gate"},
    )
    s = Session3(claim, client_id=f"claim-{uuid.uuid4().hex[:8]}")
    try:
        assert s.outcome is True, s.outcome
        identity = iotidentity.IotIdentityClient(s.connection)
        created = subscribed(identity.subscribe_to_create_keys_and_certificate_accepted, iotidentity.CreateKeysAndCertificateSubscriptionRequest())
        identity.publish_create_keys_and_certificate(iotidentity.CreateKeysAndCertificateRequest(), mqtt.QoS.AT_LEAST_ONCE).result(TIMEOUT)
        keys = created.result(TIMEOUT)
        accepted, rejected = register(identity, keys.certificate_ownership_token, {"SerialNumber": "0044"})
        which, reply = first(accepted, rejected)
        assert which == 1, "a template with a pre-provisioning hook provisioned without calling it"
        assert reply.status_code == 403
    finally:
        s.stop()
    with pytest.raises(iot.exceptions.ResourceNotFoundException):
        iot.describe_thing(thingName="sensor-0044")
