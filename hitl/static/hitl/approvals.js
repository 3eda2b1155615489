/*
 * The approval page: keeps the queue of pending requests current and sends decisions.
 *
 * The cards of the first paint come from the server; /ws/hitl/ then sends a snapshot (reconciled with
 * the cards, keyed by call_id), new requests, and decisions and expiries, after which a card leaves.
 * While the socket is down the page polls the REST API instead, so it never silently goes stale.
 *
 * What the server says a request's status is decides, never a message's type: a card leaves only when
 * the request it is given is no longer "pending" (or the server's full list of pending requests, the
 * snapshot or the polled one, does not have it). A "decision" or "expired" message whose request is
 * still pending only updates the card, as a repeated "request" does.
 *
 * Decisions are POSTed as JSON to /hitl/requests/<call_id>/decide/ with the CSRF token; the answer
 * (or the error: someone else decided first, invalid arguments, expired) is shown in the card.
 *
 * The desk: filters by tool, agent, session and risk over the cards held (kept in the query string);
 * a compact view, one line per request (remembered in localStorage); keyboard shortcuts (j/k select,
 * a/e/r decide, ? help); presence (the page tells /ws/hitl/ which requests it has open, the selected
 * one and any with an editor open, and shows who else has each open); and a second, confirming step
 * before a high-risk tool (`risk` "high") is approved.
 */
(function () {
  "use strict";

  // The page's own confirm step replaces the no-script one (the form's "I checked" box).
  document.documentElement.classList.add("hitl-js");

  const config = JSON.parse(document.getElementById("hitl-config").textContent);
  const queue = document.getElementById("queue");
  const template = document.getElementById("card-template");
  const countElement = document.querySelector("[data-testid=pending-count]");
  const emptyElement = document.querySelector("[data-testid=empty]");
  const notices = document.querySelector("[data-testid=notices]");
  const csrfToken = document.querySelector("meta[name=csrf-token]").content;
  const parseTime = window.LivePage.parseTime;
  const notify = (text, kind) => window.LivePage.notify(notices, text, kind);
  // Every page writes moments one way: "2026-12-05 15:00:07 UTC" (events/static/events/time.js).
  const formatMoment = (iso) => (iso ? window.EventbusTime.format(iso) : "");
  // The signed-in user: left out of "Also viewing".
  const viewer = queue.dataset.viewer || "";

  // The server's clock minus this device's: deadlines are the server's, whatever the phone's clock says.
  const clockOffset = parseTime(config.server_now) - Date.now();
  const serverNow = () => Date.now() + clockOffset;

  const POLL_AFTER_MS = 5000; // socket down this long: poll the REST API
  const POLL_EVERY_MS = 10000;
  const CLOSED_CARD_MS = 30000; // a card we could not decide stays this long to show why
  const PAGE_TITLE = document.title;

  // call_id -> {data, card, state: "open" | "busy" | "closed", closeTimer, laterDecision}
  const entries = new Map();
  // On one request's page (/hitl/requests/<call_id>/): only that request, and the page is drawn again
  // once it is decided, so its outcome and history show.
  const only = typeof config.only_call_id === "string" ? config.only_call_id : null;
  let socket = null; // the LiveSocket, once started (the end of this file)
  const mine = (approval) => !only || (approval && approval.call_id === only);
  let reloading = false;
  function reloadSoon() {
    if (!only || reloading) return;
    reloading = true;
    setTimeout(() => window.location.reload(), 1500);
  }

  // Alerts (opt-in, remembered by this browser): a desktop notification when the page is not in front,
  // and a short tone, for a new request and for one about to expire. The tone is made with Web Audio,
  // so the page loads no sound file.
  const ALERTS_KEY = "hitl.alerts";
  const alertsButton = document.querySelector("[data-testid=alerts-toggle]");
  let audio = null;

  function alertsOn() {
    try {
      return window.localStorage.getItem(ALERTS_KEY) === "on";
    } catch (error) {
      return false;
    }
  }

  function showAlertsState() {
    if (!alertsButton) return;
    const on = alertsOn();
    alertsButton.setAttribute("aria-pressed", on ? "true" : "false");
    alertsButton.textContent = on ? "Alerts on" : "Alerts off";
    alertsButton.title = on
      ? "A sound and a desktop notification for new and expiring requests (click to turn off)"
      : "Turn on a sound and desktop notifications for new and expiring requests";
  }

  async function toggleAlerts() {
    const on = !alertsOn();
    try {
      window.localStorage.setItem(ALERTS_KEY, on ? "on" : "off");
    } catch (error) {
      // private mode: on for this page only
    }
    if (on) {
      if (window.AudioContext && !audio) audio = new window.AudioContext();
      if ("Notification" in window && window.Notification.permission === "default") {
        try {
          await window.Notification.requestPermission();
        } catch (error) {
          // refused or unsupported: the sound still plays
        }
      }
      if ("Notification" in window && window.Notification.permission === "denied") {
        notify("Desktop notifications are blocked for this site in the browser's settings; the sound still plays.", "warning");
      }
    }
    showAlertsState();
  }

  function tone(urgent) {
    if (!window.AudioContext) return;
    try {
      audio = audio || new window.AudioContext();
      const oscillator = audio.createOscillator();
      const gain = audio.createGain();
      oscillator.frequency.value = urgent ? 880 : 660;
      gain.gain.setValueAtTime(0.12, audio.currentTime);
      gain.gain.exponentialRampToValueAtTime(0.001, audio.currentTime + 0.4);
      oscillator.connect(gain).connect(audio.destination);
      oscillator.start();
      oscillator.stop(audio.currentTime + 0.4);
    } catch (error) {
      // no audio device: nothing to play
    }
  }

  function alertOf(approval, urgent) {
    if (!alertsOn() || !approval || !mine(approval)) return;
    tone(urgent);
    if (!("Notification" in window) || window.Notification.permission !== "granted" || !document.hidden) return;
    const title = (urgent ? "Expiring: " : "Approval needed: ") + approval.tool_name;
    try {
      const shown = new window.Notification(title, {
        body: (approval.agent ? approval.agent + ": " : "") + (approval.reason || approval.call_id),
        tag: "hitl-" + approval.call_id + (urgent ? "-expiring" : ""),
      });
      shown.onclick = () => {
        window.focus();
        shown.close();
      };
    } catch (error) {
      // some mobile browsers only notify from a service worker: the sound did its part
    }
  }

  if (alertsButton) {
    alertsButton.hidden = false;
    alertsButton.addEventListener("click", toggleAlerts);
    showAlertsState();
  }

  // Formatting

  function shortDuration(seconds) {
    seconds = Math.max(0, Math.floor(seconds));
    if (seconds < 60) return seconds + "s";
    let minutes = Math.floor(seconds / 60);
    seconds %= 60;
    if (minutes < 60) return minutes + "m " + String(seconds).padStart(2, "0") + "s";
    let hours = Math.floor(minutes / 60);
    minutes %= 60;
    if (hours < 48) return hours + "h " + String(minutes).padStart(2, "0") + "m";
    const days = Math.floor(hours / 24);
    hours %= 24;
    return days + "d " + hours + "h";
  }

  function pretty(value) {
    return JSON.stringify(value, null, 2);
  }

  function find(card, testid) {
    return card.querySelector("[data-testid=" + testid + "]");
  }

  function field(card, name) {
    return card.querySelector("[data-field=" + name + "]");
  }

  function panel(card, name) {
    return card.querySelector("[data-panel=" + name + "]");
  }

  function describe(approval) {
    const name = approval.tool_name + " (" + approval.call_id + ")";
    const by = approval.decided_by ? " by " + approval.decided_by : "";
    switch (approval.status) {
      case "approved":
        return name + " was approved" + by + ".";
      case "edited":
        return name + " was approved with edited arguments" + by + ".";
      case "rejected":
        return name + " was rejected" + by + ".";
      case "expired":
        return name + " expired: " + (approval.on_expire === "approve" ? "approved" : "rejected") + " on timeout.";
      case "cancelled":
        return name + " was withdrawn by the agent.";
      default:
        return name + " is no longer pending.";
    }
  }

  // Cards

  function fill(card, approval) {
    card.dataset.callId = approval.call_id;
    card.dataset.createdAt = approval.created_at;
    card.dataset.expiresAt = approval.expires_at;
    find(card, "tool").textContent = approval.tool_name;
    const risk = typeof approval.risk === "string" ? approval.risk : "";
    card.dataset.risk = risk;
    const badge = find(card, "risk");
    badge.hidden = !risk;
    badge.className = "badge risk" + (risk ? " risk-" + risk : "");
    badge.textContent = risk ? risk + " risk" : "";
    stamp(card, approval);
    find(card, "agent").textContent = approval.agent || "";
    find(card, "reason").textContent = approval.reason || "";
    find(card, "arguments").textContent = pretty(approval.arguments);
    field(card, "on_expire").textContent = approval.on_expire;
    const session = field(card, "session");
    session.textContent = approval.session_id;
    session.href = config.links.timeline + encodeURIComponent(approval.session_id);
    const call = field(card, "call");
    call.textContent = approval.call_id;
    call.href = config.links.admin_search + encodeURIComponent(approval.call_id);
    const trace = field(card, "trace");
    field(card, "correlation-row").hidden = !approval.correlation_id;
    if (approval.correlation_id) {
      trace.textContent = approval.correlation_id;
      trace.href = config.links.trace + encodeURIComponent(approval.correlation_id);
    }
    field(card, "rule-row").hidden = !approval.rule;
    find(card, "rule").textContent = approval.rule || "";
    const quorum = (approval.approvals_required || 1) > 1 || !!approval.approver_group;
    field(card, "approvals-row").hidden = !quorum;
    find(card, "approvals").textContent = approvalsText(approval);
    field(card, "escalated-row").hidden = !approval.escalated_at;
    find(card, "escalated").textContent = "escalated to " + (approval.escalate_to_group || "");
    card.querySelector("form.actions").action = config.links.decide.replace(
      "__call_id__",
      encodeURIComponent(approval.call_id)
    );
    for (const button of card.querySelectorAll("form.actions button")) button.disabled = !config.may_decide;
  }

  // The card's moments, through the shared formatter.
  function stamp(card, approval) {
    for (const [testid, iso] of [
      ["created-at", approval.created_at],
      ["expires-at", approval.expires_at],
    ]) {
      const element = find(card, testid);
      if (!element) continue;
      element.dataset.iso = iso || "";
      element.setAttribute("datetime", iso || "");
      element.textContent = formatMoment(iso);
    }
    card.querySelector(".time-left").title =
      "Time left before this request expires (at " + formatMoment(approval.expires_at) + ")";
  }

  // "1 of 2: alice" (hitl.views.approvals_text says the same at first paint).
  function approvalsText(approval) {
    const given = approval.approvals || [];
    let text = given.length + " of " + (approval.approvals_required || 1);
    if (given.length) text += ": " + given.map((a) => a.user).join(", ");
    if (approval.approver_group) text += " (group " + approval.approver_group + ")";
    return text;
  }

  function newCard(approval) {
    const card = template.content.firstElementChild.cloneNode(true);
    fill(card, approval);
    return card;
  }

  function sortKey(approval) {
    return [parseTime(approval.expires_at), parseTime(approval.created_at), approval.call_id];
  }

  function before(a, b) {
    const x = sortKey(a);
    const y = sortKey(b);
    for (let i = 0; i < x.length; i += 1) {
      if (x[i] < y[i]) return true;
      if (x[i] > y[i]) return false;
    }
    return false;
  }

  // The request's status as the server gave it: "pending", another status, or "" when it gave none.
  function statusOf(approval) {
    return approval && typeof approval.status === "string" ? approval.status : "";
  }

  // Whether the server says this request has left the queue (a message without a status says nothing).
  function leftPending(approval) {
    const status = statusOf(approval);
    return status !== "" && status !== "pending";
  }

  // A pending request: a new card, or (already shown) the card updated with what the server sent.
  function add(approval) {
    if (!approval || typeof approval.call_id !== "string" || !approval.call_id || leftPending(approval)) return;
    if (!mine(approval)) return;
    const known = entries.get(approval.call_id);
    if (known) {
      known.data = Object.assign({}, known.data, approval);
      if (known.state === "open") {
        fill(known.card, known.data);
        tickEntry(known, serverNow());
        desk.refresh();
      }
      return;
    }
    const card = newCard(approval);
    const entry = { data: approval, card: card, state: "open" };
    // Soonest deadline first: the new card goes before the first card due later.
    let next = null;
    for (const other of entries.values()) {
      if (other.card.isConnected && before(approval, other.data)) {
        if (next === null || before(other.data, next.data)) next = other;
      }
    }
    queue.insertBefore(card, next ? next.card : null);
    entries.set(approval.call_id, entry);
    tickEntry(entry, serverNow());
    showPresence(approval.call_id);
    update();
  }

  function remove(callId) {
    const entry = entries.get(callId);
    if (!entry) return;
    if (only) reloadSoon();
    clearTimeout(entry.closeTimer);
    const wasFocused = focusedId === callId;
    const after = wasFocused ? neighbour(entry) : null;
    const hadFocus = entry.card.contains(document.activeElement);
    entry.card.remove();
    entries.delete(callId);
    if (wasFocused) setFocus(after, { move: after !== null && hadFocus });
    update();
    reportViewing();
  }

  function panelOpen(entry) {
    return !panel(entry.card, "edit").hidden || !panel(entry.card, "reject").hidden;
  }

  // A decision or expiry from anyone: the card leaves (unless our own decision is in flight: its
  // answer says what happened, and a conflict stays visible in the card). Only the request's status
  // counts: one the server still calls pending stays (and is updated), whatever the message's type.
  function decided(approval) {
    if (!approval || typeof approval.call_id !== "string") return;
    if (!leftPending(approval)) {
      if (statusOf(approval) === "pending") add(approval);
      return;
    }
    if (only && approval.call_id === only) reloadSoon();
    const entry = entries.get(approval.call_id);
    if (!entry) return;
    if (entry.state === "busy") {
      entry.laterDecision = approval;
      return;
    }
    if (entry.state === "closed") return;
    if (panelOpen(entry)) notify(describe(approval) + " Your unsent decision was discarded.", "warning");
    remove(approval.call_id);
  }

  // The server's full list of pending requests: add what is missing, drop what is no longer pending.
  function reconcile(pending) {
    const present = new Set();
    for (const approval of pending) {
      if (!approval || leftPending(approval)) continue; // in the list, but not pending: not present
      present.add(approval.call_id);
      add(approval);
    }
    for (const [callId, entry] of Array.from(entries)) {
      if (!present.has(callId) && entry.state === "open") {
        if (panelOpen(entry)) {
          notify(entry.data.tool_name + " (" + callId + ") is no longer pending.", "warning");
        }
        remove(callId);
      }
    }
  }

  function update() {
    let open = 0;
    for (const entry of entries.values()) if (entry.state !== "closed") open += 1;
    countElement.textContent = String(open);
    emptyElement.hidden = open > 0;
    document.title = open ? "(" + open + ") " + PAGE_TITLE : PAGE_TITLE;
    desk.refresh();
  }

  // Age and countdown, every second, from the server's clock.

  function tickEntry(entry, now) {
    const card = entry.card;
    const data = entry.data;
    find(card, "age").textContent = shortDuration((now - parseTime(data.created_at)) / 1000);
    const left = (parseTime(data.expires_at) - now) / 1000;
    find(card, "time-left").textContent = left > 0 ? shortDuration(left) : "expiring…";
    if (entry.state === "closed") return;
    card.classList.toggle("urgent", left <= config.urgent_s);
    card.classList.toggle("soon", left > config.urgent_s && left <= config.soon_s);
  }

  function tick() {
    const now = serverNow();
    for (const entry of entries.values()) tickEntry(entry, now);
  }

  // The editor: JSON validated as it is typed, and the difference from the proposed arguments.

  function kindOf(value) {
    if (value === null) return "null";
    if (Array.isArray(value)) return "an array";
    return "a " + typeof value;
  }

  function jsonErrorText(error, text) {
    let message = String(error.message || error);
    const at = /position (\d+)/.exec(message);
    if (at && !/line \d+/.test(message)) {
      const upTo = text.slice(0, Number(at[1]));
      const line = upTo.split("\n").length;
      const column = upTo.length - upTo.lastIndexOf("\n");
      message += " (line " + line + ", column " + column + ")";
    }
    return message;
  }

  // What JSON.parse lets through silently: a key given twice (the last one wins), and integers too
  // large for JavaScript's numbers (rounded). The text is valid JSON when this runs.
  function scanJson(text) {
    const stack = [];
    let i = 0;
    while (i < text.length) {
      const c = text[i];
      if (c === '"') {
        let j = i + 1;
        while (j < text.length && text[j] !== '"') j += text[j] === "\\" ? 2 : 1;
        const top = stack[stack.length - 1];
        if (top && top.object && top.expectKey) {
          const key = JSON.parse(text.slice(i, j + 1));
          if (top.keys.has(key)) return 'The key "' + key + '" appears twice in one object; only one would be kept.';
          top.keys.add(key);
          top.expectKey = false;
        }
        i = j + 1;
        continue;
      }
      if (c === "-" || (c >= "0" && c <= "9")) {
        let j = i + 1;
        while (j < text.length && /[0-9eE.+-]/.test(text[j])) j += 1;
        const token = text.slice(i, j);
        if (/^-?\d+$/.test(token) && !Number.isSafeInteger(Number(token))) {
          return "The number " + token + " is too large to edit here without rounding it; edit it in the admin instead.";
        }
        i = j;
        continue;
      }
      if (c === "{") stack.push({ object: true, keys: new Set(), expectKey: true });
      else if (c === "[") stack.push({ object: false });
      else if (c === "}" || c === "]") stack.pop();
      else if (c === "," && stack.length && stack[stack.length - 1].object) stack[stack.length - 1].expectKey = true;
      i += 1;
    }
    return null;
  }

  function parseArguments(text) {
    if (!text.trim()) return { error: "Enter the arguments as a JSON object, e.g. {}." };
    let value;
    try {
      value = JSON.parse(text);
    } catch (error) {
      return { error: "This is not valid JSON: " + jsonErrorText(error, text) };
    }
    if (value === null || typeof value !== "object" || Array.isArray(value)) {
      return { error: "The arguments must be a JSON object ({…}), not " + kindOf(value) + "." };
    }
    const problem = scanJson(text);
    if (problem) return { error: problem };
    return { value: value };
  }

  function isObject(value) {
    return value !== null && typeof value === "object" && !Array.isArray(value);
  }

  function canonical(value) {
    if (Array.isArray(value)) return value.map(canonical);
    if (isObject(value)) {
      const sorted = {};
      for (const key of Object.keys(value).sort()) sorted[key] = canonical(value[key]);
      return sorted;
    }
    return value;
  }

  function sameJson(a, b) {
    return JSON.stringify(canonical(a)) === JSON.stringify(canonical(b));
  }

  // Which keys (dotted paths) an edit added, removed and changed.
  function keyChanges(before, after, path, out) {
    if (isObject(before) && isObject(after)) {
      const keys = Array.from(new Set(Object.keys(before).concat(Object.keys(after)))).sort();
      for (const key of keys) {
        const where = path ? path + "." + key : key;
        const had = Object.prototype.hasOwnProperty.call(before, key);
        const has = Object.prototype.hasOwnProperty.call(after, key);
        if (!has) out.removed.push(where);
        else if (!had) out.added.push(where);
        else keyChanges(before[key], after[key], where, out);
      }
    } else if (!sameJson(before, after)) {
      out.changed.push(path || "(all)");
    }
    return out;
  }

  // A line diff (longest common subsequence) of the two documents, keys sorted so only content differs.
  function lineDiff(a, b) {
    const n = a.length;
    const m = b.length;
    if (n * m > 4000000) {
      return a.map((t) => ["-", t]).concat(b.map((t) => ["+", t]));
    }
    const common = [];
    for (let i = 0; i <= n; i += 1) common.push(new Uint32Array(m + 1));
    for (let i = n - 1; i >= 0; i -= 1) {
      for (let j = m - 1; j >= 0; j -= 1) {
        common[i][j] = a[i] === b[j] ? common[i + 1][j + 1] + 1 : Math.max(common[i + 1][j], common[i][j + 1]);
      }
    }
    const out = [];
    let i = 0;
    let j = 0;
    while (i < n && j < m) {
      if (a[i] === b[j]) {
        out.push([" ", a[i]]);
        i += 1;
        j += 1;
      } else if (common[i + 1][j] >= common[i][j + 1]) {
        out.push(["-", a[i]]);
        i += 1;
      } else {
        out.push(["+", b[j]]);
        j += 1;
      }
    }
    while (i < n) out.push(["-", a[i++]]);
    while (j < m) out.push(["+", b[j++]]);
    return out;
  }

  function renderDiff(target, proposed, edited) {
    target.replaceChildren();
    const changes = keyChanges(proposed, edited, "", { added: [], removed: [], changed: [] });
    if (!changes.added.length && !changes.removed.length && !changes.changed.length) {
      const same = document.createElement("p");
      same.className = "diff-none";
      same.textContent = "No changes yet: edit the arguments above (or use Approve to run them as proposed).";
      target.append(same);
      return false;
    }
    const summary = document.createElement("ul");
    summary.className = "diff-summary";
    for (const [kind, label] of [
      ["changed", "Changed"],
      ["added", "Added"],
      ["removed", "Removed"],
    ]) {
      if (!changes[kind].length) continue;
      const item = document.createElement("li");
      item.className = "diff-" + kind;
      item.append(label + ": ");
      changes[kind].forEach((path, index) => {
        if (index) item.append(", ");
        const code = document.createElement("code");
        code.textContent = path;
        item.append(code);
      });
      summary.append(item);
    }
    target.append(summary);
    const lines = document.createElement("pre");
    lines.className = "diff-lines";
    const before = pretty(canonical(proposed)).split("\n");
    const after = pretty(canonical(edited)).split("\n");
    for (const [sign, text] of lineDiff(before, after)) {
      // <del> and <ins> say "removed" and "added" to assistive technology, not only by colour.
      const line = document.createElement(sign === "-" ? "del" : sign === "+" ? "ins" : "span");
      line.className = "diff-line";
      const mark = document.createElement("span");
      mark.className = "diff-sign";
      mark.setAttribute("aria-hidden", "true");
      mark.textContent = sign === "-" ? "−" : sign;
      line.append(mark, text);
      lines.append(line);
    }
    target.append(lines);
    return true;
  }

  function validate(entry) {
    const card = entry.card;
    const editor = find(card, "args-editor");
    const result = parseArguments(editor.value);
    const errorText = find(card, "args-error");
    const diff = find(card, "args-diff");
    errorText.textContent = result.error || "";
    editor.setAttribute("aria-invalid", result.error ? "true" : "false");
    let changed = false;
    if (result.error) {
      diff.replaceChildren();
      const wait = document.createElement("p");
      wait.className = "diff-none";
      wait.textContent = "The difference shows once the JSON is valid.";
      diff.append(wait);
    } else {
      changed = renderDiff(diff, entry.data.arguments, result.value);
    }
    find(card, "send-edit").disabled = Boolean(result.error) || !changed || entry.state !== "open";
    return result;
  }

  // Panels and errors

  function showError(entry, text) {
    const error = find(entry.card, "error");
    error.textContent = text || "";
    error.hidden = !text;
  }

  function openPanel(entry, name) {
    const card = entry.card;
    for (const other of ["edit", "reject"]) {
      panel(card, other).hidden = other !== name;
      find(card, other).setAttribute("aria-expanded", String(other === name));
    }
    showError(entry, "");
    if (name === "edit") {
      const editor = find(card, "args-editor");
      if (!editor.dataset.touched) editor.value = pretty(entry.data.arguments);
      validate(entry);
      editor.focus();
    } else if (name === "reject") {
      find(card, "reject-comment").focus();
    }
    setFocus(entry, { move: false });
    reportViewing();
  }

  function closePanels(entry) {
    const card = entry.card;
    for (const name of ["edit", "reject"]) {
      panel(card, name).hidden = true;
      find(card, name).setAttribute("aria-expanded", "false");
    }
    delete find(card, "args-editor").dataset.touched;
    reportViewing();
  }

  function setBusy(entry, busy) {
    entry.state = busy ? "busy" : "open";
    entry.card.classList.toggle("busy", busy);
    entry.card.setAttribute("aria-busy", String(busy));
    for (const button of entry.card.querySelectorAll("button")) {
      if (button.dataset.testid === "send-edit") continue;
      button.disabled = busy || !config.may_decide;
    }
    if (busy) find(entry.card, "send-edit").disabled = true;
    else if (!panel(entry.card, "edit").hidden) validate(entry);
  }

  // The request was decided by someone else (or expired, or is gone): say so in the card, keep it a
  // moment so the operator reads why, then let it go.
  function closeCard(entry, text) {
    entry.state = "closed";
    const card = entry.card;
    card.classList.remove("busy", "urgent", "soon");
    card.classList.add("closed");
    card.setAttribute("aria-busy", "false");
    for (const button of card.querySelectorAll("button")) button.disabled = true;
    for (const name of ["edit", "reject"]) panel(card, name).hidden = true;
    showError(entry, text);
    if (!card.querySelector("[data-action=dismiss]")) {
      const dismiss = document.createElement("button");
      dismiss.type = "button";
      dismiss.className = "btn quiet small";
      dismiss.dataset.action = "dismiss";
      dismiss.textContent = "Dismiss";
      find(card, "error").after(dismiss);
    }
    card.querySelector("[data-action=dismiss]").disabled = false;
    entry.closeTimer = setTimeout(() => remove(entry.data.call_id), CLOSED_CARD_MS);
    update();
  }

  // Deciding

  const VERBS = { APPROVE: "approved", EDIT: "approved with edits", REJECT: "rejected" };

  async function send(entry, decision, modifiedArgs, comment, remember) {
    if (entry.state !== "open") return;
    const callId = entry.data.call_id;
    setBusy(entry, true);
    showError(entry, "");
    let response;
    let body = null;
    try {
      response = await fetch(config.links.decide.replace("__call_id__", encodeURIComponent(callId)), {
        method: "POST",
        credentials: "same-origin",
        headers: {
          "Content-Type": "application/json",
          Accept: "application/json",
          "X-CSRFToken": csrfToken,
        },
        body: JSON.stringify(
          Object.assign(
            { decision: decision, modified_args: modifiedArgs, comment: comment },
            remember ? { remember: remember } : {}
          )
        ),
      });
    } catch (error) {
      setBusy(entry, false);
      showError(entry, "The server could not be reached (is the network down?). Try again.");
      return;
    }
    try {
      body = await response.json();
    } catch (error) {
      body = null;
    }
    const detail = body && body.detail ? body.detail : "";
    if (response.ok) {
      const approval = (body && body.request) || entry.data;
      if (approval.status === "pending") {
        // One approval of several: the card stays until the others approve.
        entry.data = approval;
        fill(entry.card, approval);
        setBusy(entry, false);
        notify("Your approval of " + approval.tool_name + " is recorded: " + approvalsText(approval) + ".", "success");
        return;
      }
      notify("You " + VERBS[decision] + " " + approval.tool_name + " (" + callId + ").", "success");
      remove(callId);
      return;
    }
    if (response.status === 409 || response.status === 404) {
      // Someone else decided first, or it expired, or it is gone: it cannot be decided here any more.
      closeCard(entry, detail || "This request can no longer be decided.");
      return;
    }
    setBusy(entry, false);
    if (entry.laterDecision) {
      // It was decided elsewhere while our request failed for another reason.
      closeCard(entry, describe(entry.laterDecision));
      return;
    }
    if (response.status === 400) {
      let text = detail || "The decision was refused as invalid.";
      if (body && Array.isArray(body.errors) && body.errors.length > 1) {
        text += " " + body.errors.map((e) => e.field + ": " + e.message).join("; ");
      }
      showError(entry, text);
    } else if (response.status === 401) {
      showError(entry, "You are signed out: sign in again (reload the page), then decide.");
    } else if (response.status === 403 && !body) {
      showError(entry, "The page's security token is out of date (did you sign in again elsewhere?). Reload the page and try again.");
    } else if (detail) {
      showError(entry, detail);
    } else {
      showError(entry, "The server answered " + response.status + " and decided nothing. Try again.");
    }
  }

  // Events (delegated: server-rendered and live cards alike)

  function entryOf(target) {
    const card = target.closest("[data-call-id]");
    return card ? entries.get(card.dataset.callId) : undefined;
  }

  queue.addEventListener("submit", (event) => {
    event.preventDefault(); // the form is the no-JavaScript fallback
    const entry = entryOf(event.target);
    if (entry) approveRequested(entry);
  });

  // Approve (the button, Enter on it, or the `a` key): a high-risk tool asks to be confirmed first.
  function approveRequested(entry) {
    const button = find(entry.card, "approve");
    if (entry.state !== "open" || button.disabled) return;
    if (!confirmed(entry, button, "Confirm approve " + entry.data.tool_name)) return;
    const form = entry.card.querySelector("form.actions");
    const scope = form.querySelector("[name=remember_scope]");
    const ttl = form.querySelector("[name=remember_ttl_s]");
    const remember = scope && scope.value ? { scope: scope.value, ttl_s: Number(ttl.value) } : null;
    send(entry, "APPROVE", null, "", remember);
  }

  // High risk: the first press turns the button into "Confirm approve <tool>" for CONFIRM_MS, and only a
  // second press (click, Enter, or `a` again) sends. Other levels send at once.
  const CONFIRM_MS = 6000;
  const armed = new Map(); // button -> {label, timer}

  function confirmed(entry, button, text) {
    if (entry.data.risk !== "high") return true;
    if (armed.has(button)) {
      disarm(button);
      return true;
    }
    const timer = setTimeout(() => disarm(button), CONFIRM_MS);
    armed.set(button, { label: button.textContent, timer: timer });
    button.textContent = text;
    button.classList.add("confirming");
    button.dataset.confirming = "true";
    showError(entry, "");
    return false;
  }

  function disarm(button) {
    const state = armed.get(button);
    if (!state) return;
    clearTimeout(state.timer);
    armed.delete(button);
    button.textContent = state.label;
    button.classList.remove("confirming");
    delete button.dataset.confirming;
  }

  queue.addEventListener("click", (event) => {
    const button = event.target.closest("button");
    if (!button || button.disabled) return;
    const entry = entryOf(button);
    if (!entry) return;
    const action = button.dataset.testid || button.dataset.action;
    if (action === "edit" || action === "reject") {
      if (button.getAttribute("aria-expanded") === "true") closePanels(entry);
      else openPanel(entry, action);
    } else if (action === "cancel") {
      const which = button.closest("[data-panel]").dataset.panel;
      closePanels(entry);
      find(entry.card, which).focus();
    } else if (action === "send-edit") {
      const result = validate(entry);
      if (result.error) return;
      if (!confirmed(entry, button, "Confirm approve " + entry.data.tool_name + " with these arguments")) return;
      send(entry, "EDIT", result.value, field(entry.card, "edit-comment").value);
    } else if (action === "send-reject") {
      send(entry, "REJECT", null, find(entry.card, "reject-comment").value);
    } else if (action === "dismiss") {
      remove(entry.data.call_id);
    }
  });

  queue.addEventListener("input", (event) => {
    if (event.target.dataset.testid !== "args-editor") return;
    const entry = entryOf(event.target);
    if (!entry) return;
    event.target.dataset.touched = "1";
    disarm(find(entry.card, "send-edit")); // confirm what is sent, not what was there before
    validate(entry);
  });

  queue.addEventListener("keydown", (event) => {
    // Ctrl/Cmd+Enter in a panel's text sends it.
    if (event.key !== "Enter" || !(event.ctrlKey || event.metaKey)) return;
    const section = event.target.closest("[data-panel]");
    if (!section) return;
    const target = section.querySelector("[data-testid=send-edit], [data-testid=send-reject]");
    if (target && !target.disabled) {
      event.preventDefault();
      target.click();
    }
  });

  // The desk: filters, the compact view, the selected card, keyboard shortcuts, presence.

  const filterForm = document.querySelector("[data-testid=filters]");
  const filterEmpty = document.querySelector("[data-testid=filter-empty]");
  const FILTERS = ["tool", "agent", "session", "risk"];
  const filters = { tool: "", agent: "", session: "", risk: "" };
  const shownOptions = { tool: "", agent: "" };

  function readFilters() {
    const params = new URLSearchParams(window.location.search);
    for (const name of FILTERS) filters[name] = filterForm ? (params.get(name) || "").trim() : "";
  }

  function writeFilters() {
    const url = new URL(window.location.href);
    for (const name of FILTERS) {
      if (filters[name]) url.searchParams.set(name, filters[name]);
      else url.searchParams.delete(name);
    }
    if (url.href !== window.location.href) window.history.replaceState(window.history.state, "", url.href);
  }

  function matches(data) {
    if (filters.tool && data.tool_name !== filters.tool) return false;
    if (filters.agent && (data.agent || "") !== filters.agent) return false;
    if (filters.session) {
      const session = String(data.session_id || "").toLowerCase();
      if (!session.includes(filters.session.toLowerCase())) return false;
    }
    if (filters.risk && (data.risk || "none") !== filters.risk) return false;
    return true;
  }

  // The tool and agent choices: what the cards held name, plus the one chosen (it may have no card now).
  function fillChoices(name, values) {
    const select = filterForm.elements[name];
    const wanted = Array.from(new Set(values.filter(Boolean).concat(filters[name] ? [filters[name]] : []))).sort();
    const key = wanted.join("\n");
    if (key !== shownOptions[name]) {
      shownOptions[name] = key;
      select.replaceChildren(new Option("any", ""));
      for (const value of wanted) select.append(new Option(value, value));
    }
    select.value = filters[name];
  }

  const desk = {
    refresh: function () {
      let total = 0;
      let shown = 0;
      for (const entry of entries.values()) {
        const visible = matches(entry.data);
        entry.card.hidden = !visible;
        total += 1;
        if (visible) shown += 1;
      }
      if (focusedId !== null && entries.has(focusedId) && entries.get(focusedId).card.hidden) setFocus(null);
      if (!filterForm) return;
      const data = Array.from(entries.values(), (entry) => entry.data);
      fillChoices("tool", data.map((d) => d.tool_name));
      fillChoices("agent", data.map((d) => d.agent));
      if (filterForm.elements.session !== document.activeElement) filterForm.elements.session.value = filters.session;
      filterForm.elements.risk.value = filters.risk;
      const filtering = FILTERS.some((name) => filters[name]);
      filterForm.querySelector("[data-testid=filter-count]").textContent = shown + " of " + total + " shown";
      filterForm.querySelector("[data-testid=filter-clear]").disabled = !filtering;
      filterEmpty.hidden = !(filtering && total > 0 && shown === 0);
    },
  };

  function clearFilters() {
    for (const name of FILTERS) filters[name] = "";
    writeFilters();
    desk.refresh();
  }

  if (filterForm) {
    readFilters();
    filterForm.hidden = false;
    filterForm.addEventListener("submit", (event) => event.preventDefault());
    const changed = (event) => {
      const name = event.target.name;
      if (!FILTERS.includes(name)) return;
      filters[name] = event.target.value.trim();
      writeFilters();
      desk.refresh();
    };
    filterForm.addEventListener("change", changed);
    filterForm.addEventListener("input", changed);
    filterForm.querySelector("[data-testid=filter-clear]").addEventListener("click", clearFilters);
    filterEmpty.querySelector("[data-action=clear-filters]").addEventListener("click", clearFilters);
  }

  // The compact view: one line per request, remembered by this browser.
  const DENSITY_KEY = "hitl.density";
  const densityButton = document.querySelector("[data-testid=density-toggle]");

  function compactStored() {
    try {
      return window.localStorage.getItem(DENSITY_KEY) === "compact";
    } catch (error) {
      return false;
    }
  }

  function showDensity(compact) {
    queue.classList.toggle("compact", compact);
    if (densityButton) densityButton.setAttribute("aria-pressed", compact ? "true" : "false");
  }

  if (densityButton) {
    showDensity(compactStored());
    densityButton.addEventListener("click", () => {
      const compact = !queue.classList.contains("compact");
      try {
        window.localStorage.setItem(DENSITY_KEY, compact ? "compact" : "comfortable");
      } catch (error) {
        // private mode: for this page only
      }
      showDensity(compact);
      const focused = focusedId !== null ? entries.get(focusedId) : undefined;
      if (focused) focused.card.scrollIntoView({ block: "nearest" });
    });
  }

  // The selected card (j/k, a click in it): outlined, and reported as open to the other operators.
  let focusedId = null;

  function visibleEntries() {
    const list = [];
    for (const card of queue.querySelectorAll("[data-testid=request]")) {
      const entry = entries.get(card.dataset.callId);
      if (entry && !card.hidden) list.push(entry);
    }
    return list;
  }

  // The card to select when `entry` leaves: the next visible one, else the previous.
  function neighbour(entry) {
    const list = visibleEntries();
    const index = list.indexOf(entry);
    if (index < 0) return null;
    return list[index + 1] || list[index - 1] || null;
  }

  function setFocus(entry, options) {
    const callId = entry ? entry.data.call_id : null;
    if (callId !== focusedId) {
      const previous = focusedId !== null ? entries.get(focusedId) : undefined;
      if (previous) {
        previous.card.classList.remove("is-focused");
        previous.card.removeAttribute("aria-current");
      }
      focusedId = callId;
    }
    if (entry) {
      entry.card.classList.add("is-focused");
      entry.card.setAttribute("aria-current", "true");
      if (options && options.move) {
        entry.card.focus({ preventScroll: true });
        entry.card.scrollIntoView({ block: "nearest" });
      }
    }
    reportViewing();
  }

  function moveFocus(step) {
    const list = visibleEntries();
    if (!list.length) return;
    let index = list.findIndex((entry) => entry.data.call_id === focusedId);
    if (index < 0) index = step > 0 ? 0 : list.length - 1;
    else index = Math.min(list.length - 1, Math.max(0, index + step));
    setFocus(list[index], { move: true });
  }

  queue.addEventListener("focusin", (event) => {
    const entry = entryOf(event.target);
    if (entry && entry.data.call_id !== focusedId) setFocus(entry, { move: false });
  });
  queue.addEventListener("pointerdown", (event) => {
    const entry = entryOf(event.target);
    if (entry && entry.data.call_id !== focusedId) setFocus(entry, { move: false });
  });

  // Keyboard shortcuts: never while typing, never with Ctrl, Alt or Cmd held.
  const help = document.querySelector("[data-testid=shortcuts-help]");
  const helpButton = document.querySelector("[data-testid=shortcuts-open]");

  function openHelp() {
    if (help && !help.open) help.showModal();
  }
  if (helpButton) helpButton.addEventListener("click", openHelp);

  function typing(target) {
    if (!(target instanceof Element)) return false;
    return target.isContentEditable || target.closest("input, textarea, select, [contenteditable]") !== null;
  }

  document.addEventListener("keydown", (event) => {
    if (event.defaultPrevented || event.ctrlKey || event.metaKey || event.altKey || event.isComposing) return;
    if (help && help.open) {
      if (event.key === "Escape") {
        event.preventDefault();
        help.close();
      }
      return; // the dialog is in front: only its own keys
    }
    if (typing(event.target)) return;
    const focused = focusedId !== null ? entries.get(focusedId) : undefined;
    switch (event.key) {
      case "j":
        moveFocus(1);
        break;
      case "k":
        moveFocus(-1);
        break;
      case "?":
        openHelp();
        break;
      case "a":
      case "e":
      case "r":
        if (!focused) {
          notify("Select a request first: j and k move between them.", "warning");
        } else if (event.key === "a") {
          approveRequested(focused);
        } else {
          const name = event.key === "e" ? "edit" : "reject";
          if (focused.state === "open" && !find(focused.card, name).disabled) openPanel(focused, name);
        }
        break;
      default:
        return;
    }
    event.preventDefault(); // the key is used: it must not also be typed into what it focused
  });

  // Presence: what this page has open goes to /ws/hitl/ (the selected card and any with an editor open;
  // on one request's page, that request); each card says who else has it open.
  const viewersOf = new Map(); // call_id -> usernames, as the server last said
  let reported = null;

  function viewingNow() {
    if (only) return [only];
    const ids = [];
    if (focusedId !== null && entries.has(focusedId)) ids.push(focusedId);
    for (const [callId, entry] of entries) {
      if (entry.state !== "closed" && panelOpen(entry) && !ids.includes(callId)) ids.push(callId);
    }
    return ids.slice(0, 20); // the server takes at most 20
  }

  function reportViewing(force) {
    if (!socket) return;
    const ids = viewingNow();
    const key = JSON.stringify(ids);
    if (!force && key === reported) return;
    reported = socket.send({ action: "viewing", call_ids: ids }) ? key : null;
  }

  function showPresence(callId) {
    const entry = entries.get(callId);
    if (!entry) return;
    const others = (viewersOf.get(callId) || []).filter((name) => name !== viewer);
    const line = find(entry.card, "presence");
    line.textContent = others.length ? "Also viewing: " + others.join(", ") : "";
    line.hidden = !others.length;
    entry.card.classList.toggle("watched", others.length > 0);
  }

  function presence(message) {
    if (typeof message.call_id !== "string" || !Array.isArray(message.viewers)) return;
    const names = message.viewers.filter((name) => typeof name === "string");
    if (names.length) viewersOf.set(message.call_id, names);
    else viewersOf.delete(message.call_id);
    showPresence(message.call_id);
  }

  // A new connection is told everything again: forget what the last one said.
  function presenceReset() {
    viewersOf.clear();
    for (const callId of entries.keys()) showPresence(callId);
  }

  // Moments drawn by the server (history, standing approvals, outcome) through the shared formatter too.
  for (const element of document.querySelectorAll("time[data-iso]")) {
    if (element.dataset.iso) element.textContent = formatMoment(element.dataset.iso);
  }

  // The server-rendered cards

  for (const approval of config.pending) {
    const card = queue.querySelector('[data-call-id="' + CSS.escape(approval.call_id) + '"]');
    if (card) {
      entries.set(approval.call_id, { data: approval, card: card, state: "open" });
      stamp(card, approval);
    }
  }
  update();
  tick();
  setInterval(tick, 1000);

  // Live: the socket, and polling while it is down

  let pollTimer = null;

  async function poll() {
    pollTimer = null;
    if (socket.live) return;
    try {
      const response = await fetch("/api/hitl/requests/?status=pending&limit=200", {
        credentials: "same-origin",
        headers: { Accept: "application/json" },
      });
      if (response.ok) {
        const page = await response.json();
        if (!socket.live && page && Array.isArray(page.results)) {
          // Only part of the queue: add, drop nothing (a card leaves when it is missing from the whole list).
          if (page.next) page.results.forEach(add);
          else reconcile(page.results);
        }
      }
    } catch (error) {
      // offline: the socket's reconnect and the next poll try again
    }
    schedulePoll(POLL_EVERY_MS);
  }

  // The server's warning that a request is about to expire: its card (shown, or added) pulses.
  function expiring(approval) {
    if (leftPending(approval)) return;
    add(approval);
    alertOf(approval, true);
    const entry = entries.get(approval.call_id);
    if (!entry || entry.state !== "open") return;
    entry.card.classList.add("expiring");
    if (typeof entry.card.animate === "function" && !window.matchMedia("(prefers-reduced-motion: reduce)").matches) {
      entry.card.animate(
        [{ boxShadow: "0 0 0 0 rgba(220, 38, 38, 0.7)" }, { boxShadow: "0 0 0 10px rgba(220, 38, 38, 0)" }],
        { duration: 900, iterations: 4 }
      );
    }
  }

  function schedulePoll(delay) {
    if (pollTimer === null && !socket.live) pollTimer = setTimeout(poll, delay);
  }

  socket = new window.LiveSocket({
    path: config.ws_path,
    onMessage: function (message) {
      switch (message.type) {
        case "snapshot":
          reconcile(message.pending || []);
          break;
        case "request":
        case "decision":
        case "expired":
          // The type only names why the server wrote; the request's status says what is true now.
          if (leftPending(message)) {
            decided(message);
          } else if (statusOf(message) === "pending" || message.type === "request") {
            if (message.type === "request" && typeof message.call_id === "string" && !entries.has(message.call_id) && mine(message)) {
              notify("New request: " + message.tool_name + (message.agent ? " from " + message.agent : "") + ".");
              alertOf(message, false);
            }
            add(message);
          }
          break;
        case "expiring":
          expiring(message);
          break;
        case "presence":
          presence(message);
          break;
        case "error":
          if (message.code === "not_authenticated" || message.code === "permission_denied") {
            notify(message.detail || "The live updates were refused; reload the page.", "warning");
          }
          break;
        default:
          break; // "decided" and others answer decisions sent over the socket; this page posts them
      }
    },
    onOpen: function () {
      clearTimeout(pollTimer);
      pollTimer = null;
      presenceReset();
      reportViewing(true);
    },
    onDown: function () {
      schedulePoll(POLL_AFTER_MS);
    },
  });
  socket.start();
  schedulePoll(POLL_AFTER_MS);
})();
