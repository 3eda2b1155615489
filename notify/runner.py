"""What the notify app runs in the server (events.lifecycle.run_in_server): the webhook deliveries,
the expiry warnings, and the e-mail and Slack notifiers, side by side on the server's loop."""

from __future__ import annotations

import asyncio


async def notify_forever() -> None:
    """Run every notifier until the server stops; one failing never stops the others."""
    from .delivery import delivery_worker
    from .notifiers import notifiers_forever
    from .warnings import warn_expiring_forever

    await asyncio.gather(delivery_worker.run(), warn_expiring_forever(), notifiers_forever())
