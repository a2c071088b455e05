"""MQTT against a real mosquitto: status with last will, retained alerts cleared on resolve, telemetry,
and an alert raised while the broker is down delivered when it returns."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path

import aiomqtt
import pytest

from gpumon.notify.mqtt import MqttPublisher
from gpumon.rules.alerting import Alert, State
from gpumon.store import Store
from tests.support.processes import Gpumon, Mosquitto

pytestmark = pytest.mark.integration


async def retained(port: int, topic: str, wait: float = 1.0) -> dict[str, bytes]:
    """Topic -> payload of the retained messages under `topic` (a fresh subscriber sees only those)."""
    got: dict[str, bytes] = {}
    async with aiomqtt.Client("127.0.0.1", port) as client:
        await client.subscribe(topic, qos=1)
        try:
            async with asyncio.timeout(wait):
                async for message in client.messages:
                    if message.retain:
                        got[str(message.topic)] = bytes(message.payload)  # type: ignore[arg-type]
        except TimeoutError:
            pass
    return got


def alert(name: str, state: State = State.FIRING) -> Alert:
    return Alert((("alertname", name), ("gpu", "0")), (("gpu", "0"),), {"summary": name}, state, 1_700_000_000_000, 1.0)


async def wait_until(check, timeout: float = 15.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline
        await asyncio.sleep(0.2)


async def test_alerts_retained_cleared_and_survive_a_broker_restart(tmp_path: Path) -> None:
    with Mosquitto(tmp_path) as broker:
        pub = MqttPublisher("127.0.0.1", broker.port, prefix="gpumon/test", store=Store(10), telemetry_interval=60)
        pub.start()
        try:
            pub.update([alert("A")])

            async def a_retained() -> bool:
                got = await retained(broker.port, "gpumon/test/#", 0.5)
                return got.get("gpumon/test/status") == b"online" and any("/alerts/" in t for t in got)
            await wait_until(a_retained)
            broker.stop()
            pub.update([alert("A"), alert("B")])  # raised while the broker is down
            await asyncio.sleep(0.5)
            broker.start()

            async def both() -> bool:
                got = await retained(broker.port, "gpumon/test/alerts/#", 0.5)
                names = {json.loads(v)["labels"]["alertname"] for v in got.values() if v}
                return names == {"A", "B"}
            await wait_until(both)
            pub.update([alert("B")])  # A resolved: its retained message is cleared

            async def only_b() -> bool:
                got = await retained(broker.port, "gpumon/test/alerts/#", 0.5)
                return {json.loads(v)["labels"]["alertname"] for v in got.values() if v} == {"B"}
            await wait_until(only_b)
        finally:
            await pub.stop()


def test_daemon_status_telemetry_and_last_will(tmp_path: Path) -> None:
    with Mosquitto(tmp_path) as broker:
        config = tmp_path / "gpumon.yaml"
        config.write_text(f"notify:\n  mqtt: {{broker: '127.0.0.1:{broker.port}', topic_prefix: gpumon/h1, "
                          "telemetry_interval: 500ms}\n")
        with Gpumon(tmp_path, "--config", str(config)) as g:
            async def telemetry() -> dict[str, bytes]:
                got: dict[str, bytes] = {}
                async with aiomqtt.Client("127.0.0.1", broker.port) as client:
                    await client.subscribe("gpumon/h1/#")
                    try:
                        async with asyncio.timeout(3):
                            async for message in client.messages:
                                got[str(message.topic)] = bytes(message.payload)  # type: ignore[arg-type]
                                if "gpumon/h1/gpu/0/telemetry" in got and "gpumon/h1/status" in got:
                                    break
                    except TimeoutError:
                        pass
                return got
            got = asyncio.run(telemetry())
            assert got.get("gpumon/h1/status") == b"online"
            doc = json.loads(got["gpumon/h1/gpu/0/telemetry"])
            assert doc["uuid"].startswith("GPU-") and "gpumon_memory_total_bytes" in doc["metrics"]
            assert g.proc is not None
            g.proc.send_signal(signal.SIGKILL)  # no goodbye: the broker publishes the last will
            g.proc.wait()
        deadline = time.monotonic() + 20  # at worst the 10 s keepalive expires first
        while asyncio.run(retained(broker.port, "gpumon/h1/status", 0.5)) != {"gpumon/h1/status": b"offline"}:
            assert time.monotonic() < deadline, "no last will"
