"""An ASGI app for the shutdown test: the project's app plus a slow subscriber and a burst endpoint.

POST /burst publishes 200 fire-and-forget events and answers at once; the subscriber needs about a
second to handle them all, writing each event id to $DRAIN_TEST_OUTPUT.
"""

import asyncio
import os

from eventbus_project.asgi import application as project_application
from events.base import BaseEvent
from events.event_bus import event_bus

OUTPUT = os.environ["DRAIN_TEST_OUTPUT"]


async def slow_writer(event: BaseEvent) -> None:
    await asyncio.sleep(0.005)
    with open(OUTPUT, "a") as handle:
        handle.write(event.event_id + "\n")


event_bus.subscribe(event_type="burst_tick", event_category="system", handler=slow_writer)


async def application(scope, receive, send):
    if scope["type"] == "http" and scope["path"] == "/burst":
        for n in range(200):
            await event_bus.publish(BaseEvent("burst_tick", "system", data={"n": n}))
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]}
        )
        await send({"type": "http.response.body", "body": str(event_bus.get_stats()["pending"]).encode()})
        return
    await project_application(scope, receive, send)
