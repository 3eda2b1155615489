/*
 * The live feed: follows /ws/events/ with the page's filters, newest rows on top.
 *
 * The page was rendered up to a position P (config.after): the socket connects with ?after=P and the
 * server sends what came after, then live events. The page remembers the last position it has seen
 * (events and `caught_up`), so a reconnect resumes with ?after=<last> (nothing missed, nothing twice),
 * and a `gap` (this page fell behind) is answered with {"action": "resume", "after": P}.
 */
(function () {
  "use strict";

  const config = JSON.parse(document.getElementById("feed-config").textContent);
  const feed = document.querySelector("[data-testid=feed]");
  const template = document.getElementById("row-template");
  const countElement = document.querySelector("[data-testid=feed-count]");
  const emptyElement = document.querySelector("[data-testid=feed-empty]");
  const stateElement = document.querySelector("[data-testid=feed-state]");
  const notices = document.querySelector("[data-testid=notices]");
  const pauseButton = document.querySelector("[data-action=pause]");
  const clearButton = document.querySelector("[data-action=clear]");
  const notify = (text, kind) => window.LivePage.notify(notices, text, kind);
  const maxRows = config.max_rows;

  let lastPosition = typeof config.after === "number" ? config.after : null;
  let pending = []; // arrived, not yet drawn (newest last), at most maxRows; drawn in batches
  let drawTimer = null;
  let paused = false;
  let held = []; // arrived while paused (newest last), at most maxRows
  let socket = null;

  // The server's format (events.views.clock): "15:00:07.250 UTC" (events/time.js).
  function clock(timestamp) {
    return window.EventbusTime.clock(timestamp);
  }

  // JSON on one line as Python's json.dumps(separators=(", ", ": ")) writes it (the server's rows).
  function compact(value) {
    if (Array.isArray(value)) return "[" + value.map(compact).join(", ") + "]";
    if (value !== null && typeof value === "object") {
      return "{" + Object.keys(value).map((key) => JSON.stringify(key) + ": " + compact(value[key])).join(", ") + "}";
    }
    return JSON.stringify(value);
  }

  function preview(data) {
    const text = compact(data);
    const limit = config.preview_chars;
    return text.length <= limit ? text : text.slice(0, limit - 1) + "…";
  }

  function row(event) {
    const item = template.content.firstElementChild.cloneNode(true);
    const field = (name) => item.querySelector("[data-field=" + name + "]");
    item.dataset.position = String(event.position);
    item.className = "row cat-" + event.event_category;
    const time = field("clock");
    time.textContent = clock(event.timestamp);
    time.dateTime = event.timestamp;
    time.title = event.timestamp;
    field("event_type").textContent = event.event_type;
    field("event_category").textContent = event.event_category;
    field("position").textContent = "#" + event.position;
    item.querySelector("[data-testid=trace-link]").href =
      config.links.trace_head + event.position + config.links.trace_tail;
    const session = field("session");
    if (event.session_id) {
      session.textContent = event.session_id;
      session.href = config.links.timeline + encodeURIComponent(event.session_id);
      session.hidden = false;
      field("session-label").hidden = false;
      field("no-session").hidden = true;
    } else {
      session.hidden = true;
      field("session-label").hidden = true;
      session.removeAttribute("href");
      field("no-session").hidden = false;
    }
    field("source").textContent = event.source;
    field("preview").textContent = preview(event.data);
    item.eventData = event.data; // the full JSON is written when the row is opened
    return item;
  }

  // Opening a row's data shows it in full, written only then (most rows are never opened).
  feed.addEventListener(
    "toggle",
    (event) => {
      const details = event.target;
      const item = details.closest("[data-testid=feed-event]");
      const pre = details.querySelector("[data-field=data]");
      if (details.open && item && item.eventData !== undefined && !pre.textContent) {
        pre.textContent = JSON.stringify(item.eventData, null, 2);
      }
    },
    true
  );

  function updateCount() {
    const shown = feed.children.length;
    countElement.textContent = String(shown);
    emptyElement.hidden = shown > 0;
  }

  function draw() {
    drawTimer = null;
    if (!pending.length) return;
    const batch = pending;
    pending = [];
    const fragment = document.createDocumentFragment();
    for (let i = batch.length - 1; i >= 0; i -= 1) fragment.append(row(batch[i]));
    feed.prepend(fragment);
    while (feed.children.length > maxRows) feed.lastElementChild.remove();
    updateCount();
    if (socket && socket.live) setState("Live: up to position " + lastPosition + ".");
  }

  function show(event) {
    if (paused) {
      held.push(event);
      if (held.length > maxRows) held.splice(0, held.length - maxRows);
      pauseButton.textContent = "Resume (" + held.length + (held.length >= maxRows ? "+" : "") + " new)";
      return;
    }
    pending.push(event);
    // Only the newest maxRows can stay on the page: the rest are never drawn.
    if (pending.length > maxRows) pending.splice(0, pending.length - maxRows);
    // A timer, not requestAnimationFrame: that one stops in a background tab, and the batch with it.
    if (drawTimer === null) drawTimer = setTimeout(draw, 50);
  }

  pauseButton.addEventListener("click", () => {
    paused = !paused;
    pauseButton.setAttribute("aria-pressed", String(paused));
    if (paused) {
      pauseButton.textContent = "Resume";
      return;
    }
    pauseButton.textContent = "Pause";
    const waiting = held;
    held = [];
    waiting.forEach(show);
  });

  clearButton.addEventListener("click", () => {
    feed.replaceChildren();
    pending = [];
    held = [];
    if (paused) pauseButton.textContent = "Resume";
    updateCount();
  });

  function setState(text) {
    stateElement.textContent = text;
  }

  function query() {
    const params = new URLSearchParams();
    for (const [name, value] of Object.entries(config.filters)) params.set(name, value);
    if (lastPosition !== null) params.set("after", String(lastPosition));
    const text = params.toString();
    return text ? "?" + text : "";
  }

  updateCount();
  if (!config.connect) return; // invalid filters: the form says what to fix

  socket = new window.LiveSocket({
    path: config.ws_path,
    query: query,
    onOpen: function () {
      setState(lastPosition === null ? "Following." : "Catching up from position " + lastPosition + "…");
    },
    onDown: function () {
      if (lastPosition !== null) setState("Disconnected; will resume after position " + lastPosition + ".");
    },
    onRefused: function (code, detail) {
      if (code === 4400) setState("The server refused the filters: " + (detail || "invalid filter") + ".");
      else notify(detail || "The live feed was refused; sign in again and reload the page.", "warning");
    },
    onMessage: function (message) {
      switch (message.type) {
        case "event": {
          const position = message.position;
          // Resuming can repeat what the page already has: positions only grow, so skip those.
          if (typeof position !== "number" || (lastPosition !== null && position <= lastPosition)) return;
          lastPosition = position;
          const event = Object.assign({}, message.event, { position: position });
          show(event);
          break;
        }
        case "caught_up":
          if (typeof message.position === "number") {
            lastPosition = lastPosition === null ? message.position : Math.max(lastPosition, message.position);
          }
          setState("Live: up to position " + lastPosition + ".");
          break;
        case "gap":
          // The server dropped this page's backlog: ask again from where it says we are.
          if (typeof message.after === "number") lastPosition = message.after;
          notify("This page fell behind the feed; catching up from position " + lastPosition + ".", "warning");
          setState("Catching up from position " + lastPosition + "…");
          socket.send({ action: "resume", after: lastPosition });
          break;
        case "error":
          if (message.code !== "invalid_filter") notify(message.detail || "The server reported an error.", "warning");
          break;
        default:
          break;
      }
    },
  });
  socket.start();
})();
