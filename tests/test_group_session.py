"""A worker's consumer group waits INGEST_KAFKA_SESSION_TIMEOUT_MS for a
heartbeat: a member SIGKILLed (it never leaves the group) holds its
partitions about that long, then the member that replaces it gets them. On
a real Tansu broker, with the consumers the workers use (clients.consumer)."""

from __future__ import annotations

import asyncio
import signal
import sys
import textwrap
import time
import uuid

from ingest.kafka import clients
from ingest.settings import Settings
from tests.conftest import ROOT

SESSION_MS = 1500
# With aiokafka's 10 s the replacement waited 18 s on this broker (it waits
# out the dead member's session, then half a session more before assigning).
REPLACED_WITHIN_S = 9.0

MEMBER = textwrap.dedent(
    """
    import asyncio, sys
    from ingest.kafka import clients
    from ingest.settings import Settings

    async def main(bootstrap, session_ms, group):
        consumer = clients.consumer(Settings(kafka_session_timeout_ms=session_ms), bootstrap, group_id=group)
        await consumer.start()
        consumer.subscribe([clients.EVENTS_TOPIC])
        while not consumer.assignment():
            await consumer.getmany(timeout_ms=100)
        print("assigned", flush=True)
        await asyncio.sleep(600)

    asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3]))
    """
)


async def test_a_sigkilled_members_partitions_go_to_its_replacement_after_the_session_timeout(
    broker: str,
) -> None:
    settings = Settings(kafka_session_timeout_ms=SESSION_MS)
    await clients.ensure_topics(settings, broker)
    group = f"session-{uuid.uuid4().hex[:8]}"
    member = await asyncio.create_subprocess_exec(
        sys.executable, "-c", MEMBER, broker, str(SESSION_MS), group, cwd=ROOT, stdout=asyncio.subprocess.PIPE
    )
    try:
        assert member.stdout is not None
        line = await asyncio.wait_for(member.stdout.readline(), timeout=30)
        assert line.strip() == b"assigned"
    finally:
        member.send_signal(signal.SIGKILL)  # no LeaveGroup: the group must time it out
        await asyncio.wait_for(member.wait(), timeout=10)

    replacement = clients.consumer(settings, broker, group_id=group)
    started = time.monotonic()
    await replacement.start()
    try:
        replacement.subscribe([clients.EVENTS_TOPIC])
        while not replacement.assignment() and time.monotonic() - started < 30:
            await replacement.getmany(timeout_ms=100)
        waited = time.monotonic() - started
        assert replacement.assignment(), "the replacement never got the dead member's partitions"
        assert waited < REPLACED_WITHIN_S, f"the replacement waited {waited:.1f} s"
    finally:
        await replacement.stop()
