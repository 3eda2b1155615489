/*
 * The overview's figures, kept current: a fetch of /overview.json every 10 s, and at once (at most one
 * a second) when /ws/hitl/ reports a request, a decision or an expiry. Polling a few indexed counts is
 * cheaper than following /ws/events/ at full ingest rate just to count.
 */
(function () {
  "use strict";

  const EVERY_MS = 10000;
  let pending = null;

  function set(testid, value) {
    const element = document.querySelector("[data-testid=" + testid + "]");
    if (element) element.textContent = value === null || value === undefined ? "none" : String(value);
  }

  function render(data) {
    set("pending", data.approvals.pending);
    set("expiring", data.approvals.expiring_soon);
    document.querySelector("[data-testid=expiring]").classList.toggle("warn", data.approvals.expiring_soon > 0);
    set("decided", data.approvals.decided_today);
    const list = document.querySelector("[data-testid=decided-by-channel]");
    list.replaceChildren();
    const channels = Object.entries(data.approvals.decided_by_channel);
    for (const [channel, count] of channels.length ? channels : [["none yet", null]]) {
      const item = document.createElement("li");
      item.textContent = count === null ? channel : channel + ": " + count;
      list.append(item);
    }
    set("events-hour", data.events.last_hour);
    set("latest-position", data.events.latest_position);
    set("audit-entries", data.audit.entries);
    const updated = document.querySelector("[data-testid=overview-updated]");
    updated.dataset.iso = data.generated_at;
    updated.textContent = window.EventbusTime.format(data.generated_at);
  }

  async function refresh() {
    pending = null;
    try {
      const response = await fetch("/overview.json", { headers: { Accept: "application/json" } });
      if (response.ok) render(await response.json());
    } catch (error) {
      // Offline for a moment: the next tick tries again.
    }
  }

  function soon() {
    if (pending === null) pending = setTimeout(refresh, 1000);
  }

  const updated = document.querySelector("[data-testid=overview-updated]");
  updated.textContent = window.EventbusTime.format(updated.dataset.iso);
  setInterval(refresh, EVERY_MS);
  if (window.LiveSocket) {
    new window.LiveSocket({ path: "/ws/hitl/", onMessage: soon, onOpen: soon }).start();
  }
})();
