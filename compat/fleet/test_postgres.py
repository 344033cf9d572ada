"""Several `lichen fleet serve` processes on one PostgreSQL database serve one registry: what one
writes the other reads, and a race between them has exactly one winner."""

import shutil
import threading

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


def test_concurrent_create_thing_of_one_name_through_both_has_one_winner(two_fleets):
    a, b = two_fleets
    clients = [a.client("iot"), b.client("iot")]
    for round in range(10):
        name = f"contested-{round}"
        barrier = threading.Barrier(2)
        results = [None, None]

        def create(i):
            barrier.wait()
            try:
                results[i] = clients[i].create_thing(thingName=name, attributePayload={"attributes": {"by": str(i)}})
            except ClientError as e:
                results[i] = e.response["Error"]["Code"]

        threads = [threading.Thread(target=create, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        winners = [i for i, r in enumerate(results) if isinstance(r, dict)]
        assert len(winners) == 1, f"round {round}: {results}"
        assert results[1 - winners[0]] == "ResourceAlreadyExistsException", f"round {round}: {results}"
        stored = clients[1 - winners[0]].describe_thing(thingName=name)
        assert stored["attributes"] == {"by": str(winners[0])}
