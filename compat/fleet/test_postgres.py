"""Several `lichen fleet serve` processes on one PostgreSQL database serve one registry: what one
writes the other reads, and a race between them has exactly one winner."""

import multiprocessing
import shutil

import pytest
from botocore.exceptions import ClientError

from conftest import Fleet, fresh_postgres_database


@pytest.fixture
def two_fleets(tmp_path, postgres_server):
    database = fresh_postgres_database(postgres_server)
    first = Fleet(tmp_path / "a", database).start()
    # Processes behind one address share the CA that devices trust: copy it to the second root.
    (tmp_path / "b").mkdir(mode=0o700)
    shutil.copytree(tmp_path / "a" / "ca", tmp_path / "b" / "ca")
    second = None
    try:
        second = Fleet(tmp_path / "b", database).start()
        yield first, second
    finally:
        if second:
            second.stop()
        first.stop()


def test_a_thing_created_through_one_process_is_described_through_the_other(two_fleets):
    a, b = two_fleets
    created = a.client("iot").create_thing(thingName="shared-1", attributePayload={"attributes": {"site": "north"}})
    described = b.client("iot").describe_thing(thingName="shared-1")
    assert described["thingArn"] == created["thingArn"]
    assert described["thingId"] == created["thingId"]
    assert described["attributes"] == {"site": "north"}
    # The second process answers with its own admin credentials files, for the same account.
    assert b.aws("describe-thing", "--thing-name", "shared-1")["thingName"] == "shared-1"
    b.client("iot").delete_thing(thingName="shared-1")
    with pytest.raises(ClientError) as e:
        a.client("iot").describe_thing(thingName="shared-1")
    assert e.value.response["Error"]["Code"] == "ResourceNotFoundException"


def race_creates(args):
    """One racing caller (in its own process, so callers truly overlap): CreateThing of every
    name with its own configuration; what each call answered."""
    import boto3
    from botocore.config import Config

    api, access_key, secret_key, caller, names = args
    iot = boto3.client(
        "iot",
        endpoint_url=api,
        region_name="us-east-1",
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        # No client retry: a conflict the service failed to resolve must show.
        config=Config(retries={"total_max_attempts": 1}),
    )
    out = {}
    for name in names:
        try:
            iot.create_thing(thingName=name, attributePayload={"attributes": {"by": str(caller)}})
            out[name] = "created"
        except ClientError as e:
            out[name] = e.response["Error"]["Code"]
    return out


def test_concurrent_create_thing_of_one_name_through_both_has_one_winner(two_fleets):
    a, b = two_fleets
    # Two callers on each process race through the same names, each asking for a different
    # configuration: for every name exactly one wins; every other caller is told it exists.
    names = [f"contested-{n}" for n in range(60)]
    callers = [(f.api, f.access_key, f.secret_key, i, names) for i, f in enumerate([a, b, a, b])]
    with multiprocessing.get_context("fork").Pool(len(callers)) as pool:
        results = pool.map(race_creates, callers, chunksize=1)
    for name in names:
        outcomes = [r[name] for r in results]
        assert sorted(outcomes) == ["ResourceAlreadyExistsException"] * 3 + ["created"], f"{name}: {outcomes}"
        winner = outcomes.index("created")
        for f in (a, b):
            assert f.client("iot").describe_thing(thingName=name)["attributes"] == {"by": str(winner)}
