"""A Modbus TCP device for the collector's tests and benchmark, on pymodbus.

    python modbus_sim.py PORT [REGISTERS]

Unit 1. Every 100 ms it advances a step counter and writes:
  holding 0      temperature in tenths of degF, uint16: 500 + 10 * (step % 50)  (50.0 .. 99.0 degF)
  holding 2..3   pressure as float32, big-endian words: 1.0 + step % 10 / 10 (bar)
  coil 0         step is odd
  input 10..     REGISTERS more input registers (default 0) with value (index + step) % 65536,
                 for the benchmark
Prints "listening" once it serves.
"""

import asyncio
import logging
import struct
import sys

from pymodbus.datastore import ModbusDeviceContext, ModbusSequentialDataBlock, ModbusServerContext
from pymodbus.server import ModbusTcpServer

logging.disable(logging.CRITICAL)


def words_f32(x):
    hi, lo = struct.unpack(">HH", struct.pack(">f", x))
    return [hi, lo]


async def main(port, extra):
    # Sequential blocks start at 1: protocol address 0 is block address 1.
    size = 10 + max(extra, 1)
    dev = ModbusDeviceContext(
        hr=ModbusSequentialDataBlock(1, [0] * 16),
        ir=ModbusSequentialDataBlock(1, [0] * size),
        co=ModbusSequentialDataBlock(1, [False] * 16),
        di=ModbusSequentialDataBlock(1, [False] * 16),
    )
    server = ModbusTcpServer(ModbusServerContext(devices={1: dev}), address=("127.0.0.1", port))

    async def tick():
        step = 0
        while True:
            await server.async_setValues(1, 6, 0, [500 + 10 * (step % 50)])
            await server.async_setValues(1, 16, 2, words_f32(1.0 + (step % 10) / 10))
            await server.async_setValues(1, 5, 0, [step % 2 == 1])
            if extra:
                await server.async_setValues(1, 4, 10, [(i + step) % 65536 for i in range(extra)])
            step += 1
            await asyncio.sleep(0.1)

    task = asyncio.create_task(tick())
    task.add_done_callback(lambda t: t.cancelled() or t.exception() and print("tick failed:", repr(t.exception()), file=sys.stderr, flush=True))
    print("listening", flush=True)
    await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 0))
