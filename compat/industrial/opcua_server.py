"""A real OPC UA server (python `asyncua`) for the industrial collection tests.

    python opcua_server.py --port 0 [--cert server.der --key server.pem --trust-dir DIR]

Binds 127.0.0.1 (port 0: the OS picks one), prints `READY <port>` on stdout once it serves,
and runs until SIGTERM/SIGINT. Its variables change every `--period` seconds:

    Objects/Plant/Line1/Temperature   Double   20 + (tick % 1000) / 2
    Objects/Plant/Line1/Count         Int64    tick (wall-clock based: it keeps growing across
                                               restarts, so values after a restart are newer)
    Objects/Plant/Line1/Running       Boolean  tick is even
    Objects/Plant/Line2/Pressure      Double   100 + tick % 1000; status Uncertain on odd ticks
    Objects/Plant/Line2/Mode          String   "mode-<tick % 3>"
    Objects/Other/Ignored             Double   never matched by the tests' filters

With --user NAME:PASSWORD only that user name and password open a session (no anonymous ones).
With --cert/--key the only endpoint is --policy (Basic256Sha256_SignAndEncrypt by default), and a client is admitted
only when its certificate (DER or PEM) sits in --trust-dir (read on every session, so a test can
trust a client certificate that the client generated on its first, refused, attempt).
"""

import argparse
import asyncio
import signal
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from asyncua import Server, ua
from asyncua.crypto import uacrypto
from asyncua.crypto.permission_rules import User, UserRole
from asyncua.common.utils import ServiceError
from cryptography.hazmat.primitives.serialization import Encoding

NS_URI = "urn:lichen:test:plant"
APP_URI = "urn:lichen:test:opcua-server"


class PasswordUserManager:
    """Admits one user name with its password; anything else (anonymous included) is refused."""

    def __init__(self, name, password):
        self.name, self.password = name, password

    def get_user(self, iserver, username=None, password=None, certificate=None):
        if username == self.name and password == self.password:
            return User(role=UserRole.User, name=username)
        print(f"refused user {username!r}", file=sys.stderr, flush=True)
        return None


def make_trust_validator(trust_dir: Path):
    async def validate(cert, app_description):
        presented = cert.public_bytes(Encoding.DER)
        for f in sorted(trust_dir.glob("*")):
            if f.suffix.lower() not in (".der", ".pem", ".crt"):
                continue
            try:
                trusted = await uacrypto.load_certificate(f)
            except Exception:
                continue
            if trusted.public_bytes(Encoding.DER) == presented:
                return
        print(f"untrusted client certificate from {app_description.ApplicationUri}", file=sys.stderr, flush=True)
        raise ServiceError(ua.StatusCodes.BadCertificateUntrusted)

    return validate


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--cert")
    p.add_argument("--key")
    p.add_argument("--trust-dir")
    p.add_argument("--period", type=float, default=0.2)
    p.add_argument("--user")
    p.add_argument("--policy", default="Basic256Sha256_SignAndEncrypt", help="a ua.SecurityPolicyType name")
    args = p.parse_args()

    server = Server(user_manager=PasswordUserManager(*args.user.split(":", 1)) if args.user else None)
    await server.init()
    if args.user:
        server.set_identity_tokens([ua.UserNameIdentityToken])
    server.set_server_name("Lichen test plant")
    await server.set_application_uri(APP_URI)
    if args.cert:
        await server.load_certificate(args.cert)
        await server.load_private_key(args.key)
        server.set_security_policy([getattr(ua.SecurityPolicyType, args.policy)])
        server.set_certificate_validator(make_trust_validator(Path(args.trust_dir)))
    else:
        server.set_security_policy([ua.SecurityPolicyType.NoSecurity])

    idx = await server.register_namespace(NS_URI)
    objects = server.nodes.objects
    plant = await objects.add_folder(ua.NodeId("Plant", idx), ua.QualifiedName("Plant", idx))
    line1 = await plant.add_object(ua.NodeId("Plant.Line1", idx), ua.QualifiedName("Line1", idx))
    line2 = await plant.add_object(ua.NodeId("Plant.Line2", idx), ua.QualifiedName("Line2", idx))
    other = await objects.add_folder(ua.NodeId("Other", idx), ua.QualifiedName("Other", idx))

    async def var(parent, path, name, value, vtype):
        return await parent.add_variable(ua.NodeId(path, idx), ua.QualifiedName(name, idx), value, vtype)

    temp = await var(line1, "Plant.Line1.Temperature", "Temperature", 20.0, ua.VariantType.Double)
    count = await var(line1, "Plant.Line1.Count", "Count", 0, ua.VariantType.Int64)
    running = await var(line1, "Plant.Line1.Running", "Running", False, ua.VariantType.Boolean)
    pressure = await var(line2, "Plant.Line2.Pressure", "Pressure", 100.0, ua.VariantType.Double)
    mode = await var(line2, "Plant.Line2.Mode", "Mode", "mode-0", ua.VariantType.String)
    await var(other, "Other.Ignored", "Ignored", 0.0, ua.VariantType.Double)

    # A listening socket on a fixed port (restart) must not wait for TIME_WAIT to pass.
    if args.port == 0:
        import socket

        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
    else:
        port = args.port
    server.set_endpoint(f"opc.tcp://127.0.0.1:{port}/lichen/")

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    async with server:
        print(f"READY {port}", flush=True)
        while not stop.is_set():
            # Wall-clock based so it keeps growing across restarts; kept within SiteWise's int32.
            tick = int(time.time() / args.period) % 1_000_000_000

            def dv(value, vtype, status=ua.StatusCodes.Good):
                return ua.DataValue(
                    ua.Variant(value, vtype),
                    StatusCode=ua.StatusCode(status),
                    SourceTimestamp=datetime.now(timezone.utc),
                )

            await temp.write_value(dv(20.0 + (tick % 1000) / 2.0, ua.VariantType.Double))
            await count.write_value(dv(tick, ua.VariantType.Int64))
            await running.write_value(dv(tick % 2 == 0, ua.VariantType.Boolean))
            uncertain = ua.StatusCodes.UncertainLastUsableValue if tick % 2 else ua.StatusCodes.Good
            await pressure.write_value(dv(100.0 + tick % 1000, ua.VariantType.Double, uncertain))
            await mode.write_value(dv(f"mode-{tick % 3}", ua.VariantType.String))
            try:
                await asyncio.wait_for(stop.wait(), args.period)
            except asyncio.TimeoutError:
                pass


if __name__ == "__main__":
    asyncio.run(main())
