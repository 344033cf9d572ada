"""The MQTT bridge end to end on a real core: client devices (paho over TLS with client
certificates) on the client-device broker, a component on the unmodified awsiotsdk IPC client, and
mosquitto over mutual TLS as the cloud. Mappings are in conftest.MAPPINGS."""

import time

from conftest import wait_for

# How long to keep counting after the first copy arrived: a loop would have delivered again.
SETTLE = 2.0


def test_a_client_device_publish_reaches_a_component(setup, clients):
    app = setup["app"]
    dev = clients.device("dev-pub")
    dev.publish("devices/dev-pub/other", "not-mapped")
    dev.publish("devices/dev-pub/data", "reading-1")
    wait_for(lambda: app.received("reading-1"), 30, "the reading at the component")
    time.sleep(SETTLE)
    assert app.received("reading-1") == [("devices/dev-pub/data", "reading-1")]
    assert app.received("not-mapped") == []


def test_a_component_publish_reaches_the_cloud_and_the_cloud_reaches_the_component(setup, clients):
    app = setup["app"]
    cloud = clients.tester()
    cloud.subscribe("lichen/app/up/#")
    app.publish("app/up/1", "to-cloud-1")
    wait_for(lambda: cloud.received("to-cloud-1"), 30, "the component's message at the cloud")
    assert cloud.received("to-cloud-1") == [("lichen/app/up/1", "to-cloud-1")]

    # IotCore -> Pubsub: the cloud link subscribes upstream because the bridge holds the filter
    # on the iot_core bus. Publish until one arrives (the upstream SUBACK may still be on its way).
    arrived = None
    for i in range(30):
        cloud.publish("app/down/cmd", f"to-app-{i}")
        try:
            arrived = wait_for(lambda: [p for _, p in app.received() if p.startswith("to-app-")], 1, "a cloud message")
            break
        except AssertionError:
            continue
    assert arrived, "no message from the cloud reached the component"
    time.sleep(SETTLE)
    first = arrived[0]
    assert app.received(first) == [("app/down/cmd", first)]


def test_iot_core_and_local_mqtt_both_ways_on_one_filter_deliver_once_and_do_not_loop(setup, clients):
    observer = clients.device("dev-obs")
    observer.subscribe("loop/cloud/#")
    cloud = clients.tester()
    cloud.subscribe("loop/cloud/#")
    device = clients.device("dev-pub")

    device.publish("loop/cloud/d", "from-device")
    wait_for(lambda: cloud.received("from-device"), 30, "the device's message at the cloud")
    time.sleep(SETTLE)
    assert cloud.received("from-device") == [("loop/cloud/d", "from-device")]
    # The observer gets it from the broker directly; the cloud's echo does not come back down.
    assert observer.received("from-device") == [("loop/cloud/d", "from-device")]

    cloud.publish("loop/cloud/c", "from-cloud")
    wait_for(lambda: observer.received("from-cloud"), 30, "the cloud's message at the devices")
    time.sleep(SETTLE)
    assert observer.received("from-cloud") == [("loop/cloud/c", "from-cloud")]
    # The cloud sees its own publish once (mosquitto delivers it to its subscriber); the bridge
    # does not send it back up.
    assert cloud.received("from-cloud") == [("loop/cloud/c", "from-cloud")]


def test_pubsub_and_local_mqtt_both_ways_on_one_exact_topic_deliver_once_and_do_not_loop(setup, clients):
    app = setup["app"]
    observer = clients.device("dev-obs")
    observer.subscribe("loop/ps/x")
    device = clients.device("dev-pub")

    device.publish("loop/ps/x", "ps-from-device")
    wait_for(lambda: app.received("ps-from-device"), 30, "the device's message at the component")
    time.sleep(SETTLE)
    assert app.received("ps-from-device") == [("loop/ps/x", "ps-from-device")]
    assert observer.received("ps-from-device") == [("loop/ps/x", "ps-from-device")]

    app.publish("loop/ps/x", "ps-from-component")
    wait_for(lambda: observer.received("ps-from-component"), 30, "the component's message at the devices")
    time.sleep(SETTLE)
    assert observer.received("ps-from-component") == [("loop/ps/x", "ps-from-component")]
    # The component subscribed to the exact topic receives its own publish once (Greengrass
    # default receive mode), and never again through the bridge.
    assert app.received("ps-from-component") == [("loop/ps/x", "ps-from-component")]
