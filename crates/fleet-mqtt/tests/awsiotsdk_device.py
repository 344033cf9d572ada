"""One device session with the unmodified AWS IoT Device SDK (awsiotsdk) against the fleet's
device endpoint. Prints one JSON object: what happened. Driven by tests/awsiotsdk.rs."""

import argparse
import json
import threading
from concurrent.futures import Future

from awscrt import mqtt, mqtt5
from awsiot import mqtt5_client_builder, mqtt_connection_builder

TIMEOUT = 10


def settle(future, value):
    if not future.done():
        future.set_result(value)


def code(value):
    return int(getattr(value, "value", value))


def mqtt3(args):
    interrupted = threading.Event()
    received = Future()
    connection = mqtt_connection_builder.mtls_from_path(
        endpoint=args.host,
        port=args.port,
        cert_filepath=args.cert,
        pri_key_filepath=args.key,
        ca_filepath=args.ca,
        client_id=args.client_id,
        clean_session=True,
        keep_alive_secs=30,
        on_connection_interrupted=lambda connection, error, **kw: interrupted.set(),
    )
    try:
        connection.connect().result(TIMEOUT)
    except Exception as e:  # the SDK raises on a refused CONNACK or a failed handshake
        return {"connected": False, "error": f"{type(e).__name__}: {e}"}
    out = {"connected": True}
    try:
        if args.subscribe:
            subscribed, _ = connection.subscribe(
                topic=args.subscribe,
                qos=mqtt.QoS.AT_LEAST_ONCE,
                callback=lambda topic, payload, **kw: settle(received, [topic, payload.decode()]),
            )
            out["suback"] = code(subscribed.result(TIMEOUT)["qos"])
        if args.publish:
            published, _ = connection.publish(
                topic=args.publish, payload=args.payload, qos=mqtt.QoS.AT_LEAST_ONCE
            )
            try:
                published.result(2)
                out["puback"] = True
            except Exception:
                out["puback"] = False
            out["interrupted"] = interrupted.wait(TIMEOUT if not out["puback"] else 0.5)
        if args.subscribe and args.publish and not out.get("interrupted"):
            out["received"] = received.result(TIMEOUT)
    finally:
        try:
            connection.disconnect().result(TIMEOUT)
        except Exception:
            pass
    return out


def mqtt5_session(args):
    connected = Future()
    stopped = threading.Event()
    received = Future()

    def on_failure(data):
        reason = data.connack_packet.reason_code if data.connack_packet else None
        settle(connected, {"reason": None if reason is None else code(reason), "error": str(data.exception)})

    client = mqtt5_client_builder.mtls_from_path(
        endpoint=args.host,
        port=args.port,
        cert_filepath=args.cert,
        pri_key_filepath=args.key,
        ca_filepath=args.ca,
        client_id=args.client_id,
        on_lifecycle_connection_success=lambda data: settle(connected, True),
        on_lifecycle_connection_failure=on_failure,
        on_lifecycle_stopped=lambda data: stopped.set(),
        on_publish_received=lambda data: settle(
            received, [data.publish_packet.topic, bytes(data.publish_packet.payload).decode()]
        ),
    )
    client.start()
    try:
        result = connected.result(TIMEOUT)
        if result is not True:
            return {"connected": False, **result}
        out = {"connected": True}
        if args.subscribe:
            suback = client.subscribe(
                subscribe_packet=mqtt5.SubscribePacket(
                    subscriptions=[mqtt5.Subscription(topic_filter=args.subscribe, qos=mqtt5.QoS.AT_LEAST_ONCE)]
                )
            ).result(TIMEOUT)
            out["suback"] = [code(c) for c in suback.reason_codes]
        if args.publish:
            done = client.publish(
                mqtt5.PublishPacket(topic=args.publish, payload=args.payload.encode(), qos=mqtt5.QoS.AT_LEAST_ONCE)
            ).result(TIMEOUT)
            out["puback"] = code(done.puback.reason_code)
        if args.subscribe and args.publish and out["puback"] < 0x80:
            out["received"] = received.result(TIMEOUT)
        return out
    finally:
        client.stop()
        stopped.wait(TIMEOUT)


def main():
    parser = argparse.ArgumentParser()
    for name in ("host", "ca", "cert", "key", "client-id", "version"):
        parser.add_argument(f"--{name}", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--subscribe")
    parser.add_argument("--publish")
    parser.add_argument("--payload", default="hello")
    args = parser.parse_args()
    out = mqtt3(args) if args.version == "3" else mqtt5_session(args)
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
