"""A device that uses its shadow through the unmodified awsiotsdk `iotshadow` client (MQTT 3.1.1
connection from compat/fleet's Device), collecting what each response topic delivers."""

import queue

from awscrt import mqtt
from awsiot import iotshadow
from fleet_devices import TIMEOUT, Device

SHADOW_POLICY = {
    "Version": "2012-10-17",
    "Statement": [
        {
            "Effect": "Allow",
            "Action": "iot:Connect",
            "Resource": "arn:aws:iot:*:*:client/${iot:Connection.Thing.ThingName}",
        },
        {
            "Effect": "Allow",
            "Action": ["iot:Publish", "iot:Receive"],
            "Resource": "arn:aws:iot:*:*:topic/$aws/things/${iot:Connection.Thing.ThingName}/shadow/*",
        },
        {
            "Effect": "Allow",
            "Action": "iot:Subscribe",
            "Resource": "arn:aws:iot:*:*:topicfilter/$aws/things/${iot:Connection.Thing.ThingName}/shadow/*",
        },
        {
            "Effect": "Allow",
            "Action": [
                "iot:GetThingShadow",
                "iot:UpdateThingShadow",
                "iot:DeleteThingShadow",
                "iot:ListNamedShadowsForThing",
            ],
            "Resource": "arn:aws:iot:*:*:thing/${iot:Connection.Thing.ThingName}",
        },
    ],
}

QOS = mqtt.QoS.AT_LEAST_ONCE


class ShadowDevice:
    """A thing with SHADOW_POLICY, connected, and an IotShadowClient on that connection."""

    def __init__(self, fleet, iot, tmp_path, name=None):
        self.device = Device(fleet, iot, tmp_path, name=name, policy=SHADOW_POLICY)
        self.name = self.device.name
        self.connection = self.device.mqtt3()
        self.connection.connect().result(TIMEOUT)
        self.client = iotshadow.IotShadowClient(self.connection)
        self.queues = {}

    def _collect(self, key, subscribe, request):
        q = self.queues.setdefault(key, queue.Queue())
        future, _ = subscribe(request, QOS, q.put)
        future.result(TIMEOUT)
        return q

    def watch(self, shadow=None):
        """Subscribes to every response and event topic of the classic (or a named) shadow."""
        c, t = self.client, self.name
        if shadow is None:
            pairs = {
                "update/accepted": (c.subscribe_to_update_shadow_accepted, iotshadow.UpdateShadowSubscriptionRequest),
                "update/rejected": (c.subscribe_to_update_shadow_rejected, iotshadow.UpdateShadowSubscriptionRequest),
                "update/delta": (c.subscribe_to_shadow_delta_updated_events, iotshadow.ShadowDeltaUpdatedSubscriptionRequest),
                "update/documents": (c.subscribe_to_shadow_updated_events, iotshadow.ShadowUpdatedSubscriptionRequest),
                "get/accepted": (c.subscribe_to_get_shadow_accepted, iotshadow.GetShadowSubscriptionRequest),
                "get/rejected": (c.subscribe_to_get_shadow_rejected, iotshadow.GetShadowSubscriptionRequest),
                "delete/accepted": (c.subscribe_to_delete_shadow_accepted, iotshadow.DeleteShadowSubscriptionRequest),
                "delete/rejected": (c.subscribe_to_delete_shadow_rejected, iotshadow.DeleteShadowSubscriptionRequest),
            }
            for key, (sub, req) in pairs.items():
                self._collect(key, sub, req(thing_name=t))
        else:
            pairs = {
                "update/accepted": (c.subscribe_to_update_named_shadow_accepted, iotshadow.UpdateNamedShadowSubscriptionRequest),
                "update/rejected": (c.subscribe_to_update_named_shadow_rejected, iotshadow.UpdateNamedShadowSubscriptionRequest),
                "update/delta": (c.subscribe_to_named_shadow_delta_updated_events, iotshadow.NamedShadowDeltaUpdatedSubscriptionRequest),
                "get/accepted": (c.subscribe_to_get_named_shadow_accepted, iotshadow.GetNamedShadowSubscriptionRequest),
                "get/rejected": (c.subscribe_to_get_named_shadow_rejected, iotshadow.GetNamedShadowSubscriptionRequest),
                "delete/accepted": (c.subscribe_to_delete_named_shadow_accepted, iotshadow.DeleteNamedShadowSubscriptionRequest),
            }
            for key, (sub, req) in pairs.items():
                self._collect(f"{shadow}:{key}", sub, req(thing_name=t, shadow_name=shadow))

    def next(self, key, shadow=None):
        q = self.queues[f"{shadow}:{key}" if shadow else key]
        return q.get(timeout=TIMEOUT)

    def nothing(self, key, wait=1.0, shadow=None):
        q = self.queues[f"{shadow}:{key}" if shadow else key]
        try:
            got = q.get(timeout=wait)
        except queue.Empty:
            return True
        raise AssertionError(f"unexpected message on {key}: {got}")

    def update(self, desired=None, reported=None, version=None, token=None, shadow=None, **nullable):
        state = iotshadow.ShadowState(desired=desired, reported=reported, **nullable)
        if shadow is None:
            req = iotshadow.UpdateShadowRequest(thing_name=self.name, state=state, version=version, client_token=token)
            self.client.publish_update_shadow(req, QOS).result(TIMEOUT)
        else:
            req = iotshadow.UpdateNamedShadowRequest(
                thing_name=self.name, shadow_name=shadow, state=state, version=version, client_token=token
            )
            self.client.publish_update_named_shadow(req, QOS).result(TIMEOUT)

    def get(self, token=None, shadow=None):
        if shadow is None:
            self.client.publish_get_shadow(iotshadow.GetShadowRequest(thing_name=self.name, client_token=token), QOS).result(TIMEOUT)
        else:
            self.client.publish_get_named_shadow(
                iotshadow.GetNamedShadowRequest(thing_name=self.name, shadow_name=shadow, client_token=token), QOS
            ).result(TIMEOUT)

    def delete(self, token=None, shadow=None):
        if shadow is None:
            self.client.publish_delete_shadow(iotshadow.DeleteShadowRequest(thing_name=self.name, client_token=token), QOS).result(TIMEOUT)
        else:
            self.client.publish_delete_named_shadow(
                iotshadow.DeleteNamedShadowRequest(thing_name=self.name, shadow_name=shadow, client_token=token), QOS
            ).result(TIMEOUT)

    def stop(self):
        try:
            self.connection.disconnect().result(TIMEOUT)
        except Exception:
            pass
