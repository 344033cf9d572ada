"""The component registry and its artifacts: unmodified boto3 and `aws` CLI upload artifacts
through the fleet's S3 API (single PUT, multipart over 8 MiB, ranged and presigned GETs), publish
component versions whose recipes name them (digests checked or filled in), and a device
resolves and downloads them over the mutual-TLS data plane with its certificate."""

import base64
import hashlib
import json
import os
import subprocess

import boto3
import botocore.exceptions
from botocore.config import Config
import pytest
import requests
from conftest import aws_cli
from fleet_devices import Device

GG_POLICY = {
    "Version": "2012-10-17",
    "Statement": [
        {
            "Effect": "Allow",
            "Action": [
                "greengrass:ResolveComponentCandidates",
                "greengrass:GetComponentVersionArtifact",
                "greengrass:ListThingGroupsForCoreDevice",
            ],
            "Resource": "*",
        }
    ],
}


def sha256_b64(data):
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def recipe(name, version, uri=None, digest=None, extra_manifest=None, deps=None):
    artifact = {"URI": uri} if uri else None
    if artifact and digest:
        artifact["Digest"] = digest
        artifact["Algorithm"] = "SHA-256"
    manifests = [{"Platform": {"os": "linux"}, "Lifecycle": {"Run": "echo hi"}, "Artifacts": [artifact] if artifact else []}]
    if extra_manifest:
        manifests.append(extra_manifest)
    r = {
        "RecipeFormatVersion": "2020-01-25",
        "ComponentName": name,
        "ComponentVersion": version,
        "ComponentDescription": "test component",
        "ComponentPublisher": "tests",
        "Manifests": manifests,
    }
    if deps:
        r["ComponentDependencies"] = {k: {"VersionRequirement": v} for k, v in deps.items()}
    return json.dumps(r).encode()


@pytest.fixture
def s3(fleet):
    return fleet.client("s3")


@pytest.fixture
def gg(fleet):
    return fleet.client("greengrassv2")


def cli(fleet, *args, check=True):
    p = subprocess.run([aws_cli(), "--endpoint-url", fleet.api, *args], env=fleet.cli_env(), capture_output=True, text=True, timeout=300)
    if check:
        assert p.returncode == 0, f"aws {' '.join(args)} failed ({p.returncode}): {p.stderr}"
    return p


def test_boto3_puts_gets_ranges_lists_and_deletes_objects(s3):
    s3.create_bucket(Bucket="artifacts")
    s3.head_bucket(Bucket="artifacts")
    body = os.urandom(100_000)
    s3.put_object(Bucket="artifacts", Key="com.example/1.0.0/app bin.tar", Body=body)
    head = s3.head_object(Bucket="artifacts", Key="com.example/1.0.0/app bin.tar")
    assert head["ContentLength"] == len(body)
    assert s3.get_object(Bucket="artifacts", Key="com.example/1.0.0/app bin.tar")["Body"].read() == body
    part = s3.get_object(Bucket="artifacts", Key="com.example/1.0.0/app bin.tar", Range="bytes=10-19")
    assert part["ResponseMetadata"]["HTTPStatusCode"] == 206
    assert part["ContentRange"] == f"bytes 10-19/{len(body)}"
    assert part["Body"].read() == body[10:20]
    s3.put_object(Bucket="artifacts", Key="other/x", Body=b"x")
    listed = s3.list_objects_v2(Bucket="artifacts", Prefix="com.example/")
    assert [o["Key"] for o in listed["Contents"]] == ["com.example/1.0.0/app bin.tar"]
    by_dir = s3.list_objects_v2(Bucket="artifacts", Delimiter="/")
    assert [p["Prefix"] for p in by_dir["CommonPrefixes"]] == ["com.example/", "other/"]
    paged = s3.get_paginator("list_objects_v2").paginate(Bucket="artifacts", PaginationConfig={"PageSize": 1})
    assert [o["Key"] for page in paged for o in page.get("Contents", [])] == ["com.example/1.0.0/app bin.tar", "other/x"]
    s3.delete_object(Bucket="artifacts", Key="other/x")
    with pytest.raises(botocore.exceptions.ClientError) as e:
        s3.get_object(Bucket="artifacts", Key="other/x")
    assert e.value.response["Error"]["Code"] == "NoSuchKey"
    with pytest.raises(botocore.exceptions.ClientError) as e:
        s3.put_object(Bucket="no-such-bucket", Key="k", Body=b"x")
    assert e.value.response["Error"]["Code"] == "NoSuchBucket"
    # botocore presigns S3 with SigV2 unless told s3v4; the fleet verifies SigV4 only.
    v4 = boto3.client("s3", endpoint_url=s3.meta.endpoint_url, region_name="us-east-1", config=Config(signature_version="s3v4"),
                      aws_access_key_id=s3._request_signer._credentials.access_key, aws_secret_access_key=s3._request_signer._credentials.secret_key)
    url = v4.generate_presigned_url("get_object", Params={"Bucket": "artifacts", "Key": "com.example/1.0.0/app bin.tar"}, ExpiresIn=60)
    r = requests.get(url, headers={"Range": "bytes=-5"}, timeout=30)
    assert r.status_code == 206 and r.content == body[-5:], (url, r.text)
    tampered = url.replace("app%20bin.tar", "other.tar")
    assert requests.get(tampered, timeout=30).status_code == 403


def test_aws_cli_copies_a_multipart_file_up_and_down(fleet, s3, tmp_path):
    cli(fleet, "s3", "mb", "s3://big")
    src = tmp_path / "big.bin"
    data = os.urandom(9 * 1024 * 1024 + 123)
    src.write_bytes(data)
    cli(fleet, "s3", "cp", str(src), "s3://big/dir/big.bin")
    head = s3.head_object(Bucket="big", Key="dir/big.bin")
    assert head["ContentLength"] == len(data)
    # A multipart ETag names its part count.
    assert head["ETag"].strip('"').endswith("-2"), head["ETag"]
    dst = tmp_path / "back.bin"
    cli(fleet, "s3", "cp", "s3://big/dir/big.bin", str(dst))
    assert dst.read_bytes() == data
    listing = cli(fleet, "s3", "ls", "s3://big/dir/").stdout
    assert "big.bin" in listing
    assert "big" in cli(fleet, "s3", "ls").stdout
    assert s3.get_bucket_location(Bucket="big")["LocationConstraint"] is None


def test_a_component_is_published_from_a_yaml_recipe_with_the_cli_and_read_back(fleet, s3, gg, tmp_path):
    s3.create_bucket(Bucket="art")
    s3.put_object(Bucket="art", Key="hello/1.0.0/hello.sh", Body=b"echo hello\n")
    yaml_recipe = tmp_path / "recipe.yaml"
    yaml_recipe.write_text(
        "RecipeFormatVersion: '2020-01-25'\nComponentName: com.example.Hello\nComponentVersion: 1.0.0\n"
        "ComponentDescription: says hello\nManifests:\n  - Platform: {os: linux}\n"
        "    Lifecycle: {Run: 'sh {artifacts:path}/hello.sh'}\n    Artifacts:\n      - URI: s3://art/hello/1.0.0/hello.sh\n"
    )
    out = json.loads(
        cli(fleet, "greengrassv2", "create-component-version", "--inline-recipe", f"fileb://{yaml_recipe}").stdout
    )
    assert out["componentName"] == "com.example.Hello"
    assert out["status"]["componentState"] == "DEPLOYABLE"
    arn = out["arn"]
    assert arn.endswith(":components:com.example.Hello:versions:1.0.0")
    got = gg.get_component(arn=arn, recipeOutputFormat="JSON")
    r = json.loads(got["recipe"])
    art = r["Manifests"][0]["Artifacts"][0]
    # The digest Greengrass would compute was filled in.
    assert art["Digest"] == sha256_b64(b"echo hello\n")
    assert art["Algorithm"] == "SHA-256"
    assert gg.get_component(arn=arn, recipeOutputFormat="YAML")["recipe"].startswith(b"RecipeFormatVersion")
    # Devices get it as JSON, as the cloud serves recipes to cores.
    device = Device(fleet, fleet.client("iot"), tmp_path, policy=GG_POLICY)
    r = resolve(fleet, device, "com.example.Hello", {"thinggroup/G": "^1.0.0"})
    assert r.status_code == 200, r.text
    assert json.loads(base64.b64decode(r.json()["resolvedComponentVersions"][0]["recipe"])) == json.loads(got["recipe"])
    d = gg.describe_component(arn=arn)
    assert d["description"] == "says hello"
    assert d["platforms"][0]["attributes"] == {"os": "linux"}
    listed = gg.list_components()["components"]
    assert [c["componentName"] for c in listed] == ["com.example.Hello"]
    assert listed[0]["latestVersion"]["componentVersion"] == "1.0.0"
    with pytest.raises(botocore.exceptions.ClientError) as e:
        gg.create_component_version(inlineRecipe=yaml_recipe.read_bytes())
    assert e.value.response["Error"]["Code"] == "ConflictException"


@pytest.mark.parametrize("fleet_store", ["sqlite", "postgres"])
def test_versions_list_newest_first_and_delete(gg):
    for v in ["1.0.0", "1.10.0", "1.2.0"]:
        gg.create_component_version(inlineRecipe=recipe("com.example.V", v))
    comp_arn = gg.list_components()["components"][0]["arn"]
    versions = [v["componentVersion"] for v in gg.list_component_versions(arn=comp_arn)["componentVersions"]]
    assert versions == ["1.10.0", "1.2.0", "1.0.0"]
    pages = gg.get_paginator("list_component_versions").paginate(arn=comp_arn, PaginationConfig={"PageSize": 2})
    assert [v["componentVersion"] for p in pages for v in p["componentVersions"]] == versions
    gg.delete_component(arn=f"{comp_arn}:versions:1.10.0")
    assert gg.list_components()["components"][0]["latestVersion"]["componentVersion"] == "1.2.0"
    with pytest.raises(botocore.exceptions.ClientError) as e:
        gg.describe_component(arn=f"{comp_arn}:versions:1.10.0")
    assert e.value.response["Error"]["Code"] == "ResourceNotFoundException"


def test_bad_recipes_wrong_digests_and_missing_artifacts_are_named(s3, gg):
    with pytest.raises(botocore.exceptions.ClientError) as e:
        gg.create_component_version(inlineRecipe=b"RecipeFormatVersion: '2020-01-25'\nComponentName: x\nComponentVersion: not.a.version\nManifests: []\n")
    assert e.value.response["Error"]["Code"] == "ValidationException"
    assert "ComponentVersion" in e.value.response["Error"]["Message"]
    s3.create_bucket(Bucket="art")
    s3.put_object(Bucket="art", Key="a.bin", Body=b"the real bytes")
    with pytest.raises(botocore.exceptions.ClientError) as e:
        gg.create_component_version(inlineRecipe=recipe("com.example.D", "1.0.0", "s3://art/a.bin", sha256_b64(b"other bytes")))
    assert e.value.response["Error"]["Code"] == "ValidationException"
    assert "s3://art/a.bin" in e.value.response["Error"]["Message"]
    ok = gg.create_component_version(inlineRecipe=recipe("com.example.D", "1.0.0", "s3://art/a.bin", sha256_b64(b"the real bytes")))
    assert ok["status"]["componentState"] == "DEPLOYABLE"
    failed = gg.create_component_version(inlineRecipe=recipe("com.example.D", "1.1.0", "s3://art/missing.bin"))
    assert failed["status"]["componentState"] == "FAILED"
    assert "s3://art/missing.bin" in failed["status"]["errors"]
    with pytest.raises(botocore.exceptions.ClientError) as e:
        gg.create_component_version(lambdaFunction={"lambdaArn": "arn:aws:lambda:us-east-1:1:function:f:1"})
    # A function nobody published to this fleet (compat/lambda publishes them).
    assert e.value.response["Error"]["Code"] == "ResourceNotFoundException"
    assert "lichen fleet lambda publish" in e.value.response["Error"]["Message"]


def data_plane(fleet, device, method, path, body=None):
    return requests.request(
        method,
        f"{fleet.endpoints['dataPlane']}{path}",
        json=body,
        cert=(str(device.cert), str(device.key)),
        verify=fleet.root_ca,
        timeout=30,
    )


def resolve(fleet, device, name, requirements, platform=None):
    body = {
        "platform": {"name": "linux", "attributes": platform or {"os": "linux", "architecture": "amd64"}},
        "componentCandidates": [{"componentName": name, "componentVersion": None, "versionRequirements": requirements}],
    }
    return data_plane(fleet, device, "POST", "/greengrass/v2/resolveComponentCandidates", body)


def test_a_device_resolves_across_requirers_and_downloads_its_artifact_with_a_range(fleet, iot, s3, gg, tmp_path):
    s3.create_bucket(Bucket="art")
    payload = os.urandom(5000)
    s3.put_object(Bucket="art", Key="app/app.bin", Body=payload)
    windows_only = {"Platform": {"os": "windows"}, "Lifecycle": {"Run": "x"}}
    for v in ["1.0.0", "1.1.0", "2.0.0"]:
        gg.create_component_version(inlineRecipe=recipe("com.example.App", v, "s3://art/app/app.bin"))
    only_windows = json.loads(recipe("com.example.Win", "1.0.0"))
    only_windows["Manifests"] = [windows_only]
    gg.create_component_version(inlineRecipe=json.dumps(only_windows).encode())
    device = Device(fleet, iot, tmp_path, policy=GG_POLICY)

    r = resolve(fleet, device, "com.example.App", {"thinggroup/A": "^1.0.0", "com.example.Other": "<1.1.0"})
    assert r.status_code == 200, r.text
    [resolved] = r.json()["resolvedComponentVersions"]
    assert resolved["componentVersion"] == "1.0.0"
    assert resolved["vendorGuidance"] == "ACTIVE"
    served = base64.b64decode(resolved["recipe"])
    assert served == gg.get_component(arn=resolved["arn"], recipeOutputFormat="JSON")["recipe"]
    assert json.loads(served)["Manifests"][0]["Artifacts"][0]["Digest"] == sha256_b64(payload)
    r = resolve(fleet, device, "com.example.App", {"thinggroup/A": ">=1.0.0"})
    assert r.json()["resolvedComponentVersions"][0]["componentVersion"] == "2.0.0"

    r = resolve(fleet, device, "com.example.App", {"thinggroup/A": "^3.0.0"})
    assert r.status_code == 404 and "no usable version" in r.json()["message"]
    assert r.headers["x-amzn-ErrorType"] == "ResourceNotFoundException"
    r = resolve(fleet, device, "com.example.Win", {"thinggroup/A": "*"})
    assert r.status_code == 404 and "claim platform" in r.json()["message"], r.text
    r = resolve(fleet, device, "com.example.App", {"thinggroup/A": "not a range"})
    assert r.status_code == 400 and "thinggroup/A" in r.json()["message"]

    arn = requests.utils.quote(resolved["arn"], safe="")
    r = data_plane(fleet, device, "GET", f"/greengrass/v2/components/{arn}/artifacts/art/app/app.bin")
    assert r.status_code == 200, r.text
    url = r.json()["preSignedUrl"]
    got = requests.get(url, timeout=30)
    assert got.status_code == 200 and got.content == payload
    resumed = requests.get(url, headers={"Range": "bytes=4000-"}, timeout=30)
    assert resumed.status_code == 206 and resumed.content == payload[4000:]
    r = data_plane(fleet, device, "GET", f"/greengrass/v2/components/{arn}/artifacts/art/other.bin")
    assert r.status_code == 404


def test_thing_groups_for_a_core_device_name_their_parents(fleet, iot, tmp_path):
    iot.create_thing_group(thingGroupName="Parent")
    iot.create_thing_group(thingGroupName="Child", parentGroupName="Parent")
    device = Device(fleet, iot, tmp_path, policy=GG_POLICY)
    iot.add_thing_to_thing_group(thingGroupName="Child", thingName=device.name)
    r = data_plane(fleet, device, "GET", f"/greengrass/v2/coreDevices/{device.name}/thingGroups")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["nextToken"] is None
    assert [(g["thingGroupName"], [p["thingGroupName"] for p in g["rootToParentThingGroups"]]) for g in body["thingGroups"]] == [
        ("Child", ["Parent"])
    ]
    other = Device(fleet, iot, tmp_path, policy=GG_POLICY)
    assert data_plane(fleet, other, "GET", f"/greengrass/v2/coreDevices/{device.name}/thingGroups").status_code == 403


def test_a_device_without_the_greengrass_policy_is_refused(fleet, iot, gg, tmp_path):
    gg.create_component_version(inlineRecipe=recipe("com.example.P", "1.0.0"))
    device = Device(fleet, iot, tmp_path)
    r = resolve(fleet, device, "com.example.P", {"g": "*"})
    assert r.status_code == 403
    assert r.headers["x-amzn-ErrorType"] == "AccessDeniedException"
    r = data_plane(fleet, device, "GET", f"/greengrass/v2/coreDevices/{device.name}/thingGroups")
    assert r.status_code == 403


@pytest.fixture
def moto(tmp_path):
    """moto's S3 server, standing in for MinIO: its URL."""
    import socket
    import sys
    import time
    from pathlib import Path

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    exe = Path(sys.executable).parent / "moto_server"
    log = open(tmp_path / "moto.log", "wb")
    proc = subprocess.Popen([str(exe), "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                requests.get(url, timeout=2)
                break
            except requests.ConnectionError:
                assert proc.poll() is None, (tmp_path / "moto.log").read_text()
                assert time.monotonic() < deadline, "moto_server did not start"
                time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


def test_an_external_object_store_keeps_the_artifacts_and_devices_get_urls_for_it(moto, fleet_root, iot_for_remote, tmp_path):
    fleet, store = iot_for_remote
    iot = fleet.client("iot")
    gg = fleet.client("greengrassv2")
    payload = os.urandom(3000)
    store.put_object(Bucket="store", Key="gg/app.bin", Body=payload)
    store.put_object(Bucket="store", Key="elsewhere/app.bin", Body=payload)
    v = gg.create_component_version(inlineRecipe=recipe("com.example.Ext", "1.0.0", "s3://store/gg/app.bin"))
    assert v["status"]["componentState"] == "DEPLOYABLE"
    bad = gg.create_component_version(inlineRecipe=recipe("com.example.Ext", "1.1.0", "s3://store/elsewhere/app.bin"))
    assert bad["status"]["componentState"] == "FAILED"
    assert "outside" in bad["status"]["errors"]["s3://store/elsewhere/app.bin"]
    with pytest.raises(botocore.exceptions.ClientError) as e:
        gg.create_component_version(inlineRecipe=recipe("com.example.Ext", "1.2.0", "s3://store/gg/app.bin", sha256_b64(b"no")))
    assert "s3://store/gg/app.bin" in e.value.response["Error"]["Message"]
    recipe_json = json.loads(gg.get_component(arn=v["arn"], recipeOutputFormat="JSON")["recipe"])
    assert recipe_json["Manifests"][0]["Artifacts"][0]["Digest"] == sha256_b64(payload)
    device = Device(fleet, iot, tmp_path, policy=GG_POLICY)
    arn = requests.utils.quote(v["arn"], safe="")
    r = data_plane(fleet, device, "GET", f"/greengrass/v2/components/{arn}/artifacts/store/gg/app.bin")
    assert r.status_code == 200, r.text
    url = r.json()["preSignedUrl"]
    assert url.startswith(moto + "/store/gg/app.bin?") and "X-Amz-Signature=" in url
    got = requests.get(url, headers={"Range": "bytes=100-"}, timeout=30)
    assert got.status_code == 206 and got.content == payload[100:]


@pytest.fixture
def iot_for_remote(moto, fleet_root, monkeypatch):
    from conftest import Fleet

    store = boto3.client("s3", endpoint_url=moto, region_name="us-east-1", aws_access_key_id="testing", aws_secret_access_key="testing")
    store.create_bucket(Bucket="store")
    monkeypatch.setenv("LICHEN_FLEET_OBJECT_STORE", f"s3://store/gg?endpoint={moto}")
    monkeypatch.setenv("LICHEN_OBJECT_STORE_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("LICHEN_OBJECT_STORE_SECRET_ACCESS_KEY", "testing")
    f = Fleet(fleet_root).start()
    try:
        yield f, store
    finally:
        f.stop()


def lichen_fleet(fleet, *args, check=True):
    from lichen_support import lichen_bin

    p = subprocess.run([lichen_bin(), "fleet", *args], capture_output=True, text=True, timeout=120)
    if check:
        assert p.returncode == 0, f"lichen fleet {' '.join(args)} failed ({p.returncode}): {p.stderr}"
    return p


def test_the_cli_publishes_a_signed_folder_that_devices_resolve_with_its_signature(fleet, iot, gg, tmp_path):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    comp = tmp_path / "hello"
    (comp / "artifacts" / "com.example.Signed" / "1.0.0").mkdir(parents=True)
    (comp / "artifacts" / "com.example.Signed" / "1.0.0" / "hello.sh").write_text("echo signed\n")
    (comp / "recipe.yaml").write_text(
        "RecipeFormatVersion: '2020-01-25'\nComponentName: com.example.Signed\nComponentVersion: 1.0.0\n"
        "Manifests:\n  - Platform: {os: linux}\n    Lifecycle: {Run: 'sh {artifacts:path}/hello.sh'}\n"
        "    Artifacts:\n      - URI: hello.sh\n"
    )
    key = tmp_path / "signing.pem"
    public = lichen_fleet(fleet, "component", "keygen", "--out", str(key)).stdout.strip()
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    out = lichen_fleet(fleet, "component", "publish", "--root", str(fleet.root), str(comp), "--sign-key", str(key))
    published = json.loads(out.stdout)
    assert published["status"]["componentState"] == "DEPLOYABLE"
    listed = lichen_fleet(fleet, "component", "list", "--root", str(fleet.root)).stdout
    assert "com.example.Signed\t1.0.0" in listed

    device = Device(fleet, iot, tmp_path, policy=GG_POLICY)
    r = resolve(fleet, device, "com.example.Signed", {"thinggroup/G": "1.0.0"})
    assert r.status_code == 200, r.text
    [v] = r.json()["resolvedComponentVersions"]
    served = base64.b64decode(v["recipe"])
    art = json.loads(served)["Manifests"][0]["Artifacts"][0]
    assert art["URI"] == "s3://lichen-components/com.example.Signed/1.0.0/hello.sh"
    assert art["Digest"] == sha256_b64(b"echo signed\n")
    sig = v["lichenSignature"]
    raw = base64.b64decode(public)
    assert sig["keyId"] == hashlib.sha256(raw).hexdigest()
    Ed25519PublicKey.from_public_bytes(raw).verify(base64.b64decode(sig["signature"]), served)

    described = json.loads(lichen_fleet(fleet, "component", "describe", "--root", str(fleet.root), "com.example.Signed@1.0.0").stdout)
    assert described["componentVersion"] == "1.0.0"
    lichen_fleet(fleet, "component", "delete", "--root", str(fleet.root), "com.example.Signed@1.0.0")
    assert gg.list_components()["components"] == []
    missing = lichen_fleet(fleet, "component", "describe", "--root", str(fleet.root), published["arn"], check=False)
    assert missing.returncode != 0 and "does not exist" in missing.stderr


def test_unsigned_chunked_and_checksummed_bodies_are_checked(fleet, s3):
    import zlib

    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    s3.create_bucket(Bucket="bodies")
    unsigned = boto3.client("s3", endpoint_url=fleet.api, region_name="us-east-1", aws_access_key_id=fleet.access_key,
                            aws_secret_access_key=fleet.secret_key, config=Config(s3={"payload_signing_enabled": False}))
    unsigned.put_object(Bucket="bodies", Key="u", Body=b"unsigned payload")
    assert s3.get_object(Bucket="bodies", Key="u")["Body"].read() == b"unsigned payload"
    with pytest.raises(botocore.exceptions.ClientError) as e:
        s3.put_object(Bucket="bodies", Key="bad", Body=b"data", ChecksumCRC32="AAAAAA==")
    assert e.value.response["Error"]["Code"] == "BadDigest"

    # What botocore sends over TLS by default: aws-chunked with a trailing CRC32, signed by
    # botocore's own S3 signer in its trailer mode.
    def chunked(data, crc):
        trailer = base64.b64encode(crc.to_bytes(4, "big")).decode()
        return f"{len(data):x}\r\n".encode() + data + f"\r\n0\r\nx-amz-checksum-crc32:{trailer}\r\n\r\n".encode()

    def send(data, crc):
        req = AWSRequest(method="PUT", url=f"{fleet.api}/bodies/chunked", data=chunked(data, crc), headers={
            "Content-Encoding": "aws-chunked", "x-amz-trailer": "x-amz-checksum-crc32",
            "x-amz-decoded-content-length": str(len(data))})
        req.context["checksum"] = {"request_algorithm": {"in": "trailer", "algorithm": "crc32"}}
        S3SigV4Auth(Credentials(fleet.access_key, fleet.secret_key), "s3", "us-east-1").add_auth(req)
        assert req.headers["X-Amz-Content-SHA256"] == "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
        return requests.put(req.url, data=req.body, headers=dict(req.headers), timeout=30)

    data = os.urandom(70_000)
    r = send(data, zlib.crc32(data))
    assert r.status_code == 200, r.text
    assert s3.get_object(Bucket="bodies", Key="chunked")["Body"].read() == data
    r = send(b"other", zlib.crc32(data))
    assert r.status_code == 400 and "<Code>BadDigest</Code>" in r.text
    assert s3.get_object(Bucket="bodies", Key="chunked")["Body"].read() == data

    # A body other than the one whose SHA-256 was signed is refused, and nothing is stored.
    req = AWSRequest(method="PUT", url=f"{fleet.api}/bodies/swapped", data=b"signed body")
    S3SigV4Auth(Credentials(fleet.access_key, fleet.secret_key), "s3", "us-east-1").add_auth(req)
    r = requests.put(req.url, data=b"another body", headers=dict(req.headers), timeout=30)
    assert r.status_code == 400 and "XAmzContentSHA256Mismatch" in r.text
    with pytest.raises(botocore.exceptions.ClientError):
        s3.head_object(Bucket="bodies", Key="swapped")


def test_device_credentials_reach_only_the_objects_their_role_allows(fleet, iot, s3, tmp_path):
    from test_credentials import assume_policy, get_credentials, role_alias

    s3.create_bucket(Bucket="art")
    s3.put_object(Bucket="art", Key="allowed/a.bin", Body=b"for devices")
    s3.put_object(Bucket="art", Key="secret/b.bin", Body=b"not for devices")
    policy = {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": ["s3:GetObject"], "Resource": "arn:aws:s3:::art/allowed/*"},
        {"Effect": "Allow", "Action": ["s3:ListBucket"], "Resource": "arn:aws:s3:::art"},
    ]}
    alias = role_alias(fleet, iot, tmp_path, policy=policy)
    device = Device(fleet, iot, tmp_path, policy=assume_policy())
    r = get_credentials(fleet, device, alias)
    assert r.status_code == 200, r.text
    c = r.json()["credentials"]
    tes = fleet.client("s3", access_key=c["accessKeyId"], secret_key=c["secretAccessKey"], session_token=c["sessionToken"])
    assert tes.get_bucket_location(Bucket="art")["LocationConstraint"] is None
    assert tes.get_object(Bucket="art", Key="allowed/a.bin", Range="bytes=4-")["Body"].read() == b"devices"
    for call in (lambda: tes.get_object(Bucket="art", Key="secret/b.bin"), lambda: tes.put_object(Bucket="art", Key="allowed/x", Body=b"x")):
        with pytest.raises(botocore.exceptions.ClientError) as e:
            call()
        assert e.value.response["Error"]["Code"] == "AccessDenied"


def test_an_acknowledged_upload_and_component_survive_kill_9(fleet, s3, gg):
    s3.create_bucket(Bucket="durable")
    data = os.urandom(200_000)
    s3.put_object(Bucket="durable", Key="a.bin", Body=data)
    upload = s3.create_multipart_upload(Bucket="durable", Key="half")
    s3.upload_part(Bucket="durable", Key="half", UploadId=upload["UploadId"], PartNumber=1, Body=b"x" * 100)
    v = gg.create_component_version(inlineRecipe=recipe("com.example.Durable", "1.0.0", "s3://durable/a.bin"))
    fleet.kill9()
    fleet.start()
    s3 = fleet.client("s3")
    assert s3.get_object(Bucket="durable", Key="a.bin")["Body"].read() == data
    done = s3.complete_multipart_upload(Bucket="durable", Key="half", UploadId=upload["UploadId"],
                                        MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": hashlib.md5(b"x" * 100).hexdigest()}]})
    assert done["Key"] == "half"
    got = fleet.client("greengrassv2").describe_component(arn=v["arn"])
    assert got["status"]["componentState"] == "DEPLOYABLE"
