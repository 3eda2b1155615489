/*
 * LiveSocket: a WebSocket that stays connected.
 *
 * Shared by the approval page and the live feed. It reconnects with exponential backoff and jitter
 * when the connection drops, pings so that idle proxies keep it open and a dead connection is noticed,
 * reconnects at once when the tab comes back or the network returns, and shows the state in the page's
 * [data-testid=live-status] ("live" or "reconnecting"). The page gives it the URL's query as a function,
 * so a reconnect can resume from where the page is (the feed's ?after=).
 */
(function () {
  "use strict";

  const BASE_DELAY_MS = 500;
  const MAX_DELAY_MS = 15000;
  // After the server refused us (signed out, no permission), try again only slowly.
  const DENIED_DELAY_MS = 30000;
  const PING_EVERY_MS = 25000;
  // No frame at all for this long (pongs included) means the connection is dead, whatever it says.
  const SILENCE_MS = 65000;

  // Close codes of the protocol: 4401 not signed in, 4403 no permission, 4400 a bad filter (final).
  const DENIED = new Set([4401, 4403]);
  const FINAL = new Set([4400]);

  function statusElements() {
    const text = document.querySelector("[data-testid=live-status]");
    return { text: text, box: text ? text.closest(".live-status") : null };
  }

  class LiveSocket {
    /**
     * options.path: "/ws/hitl/"; options.query(): "?a=b" or ""; options.onMessage(object);
     * options.onOpen(); options.onDown(); options.onRefused(code, detail) for 4401/4403/4400.
     */
    constructor(options) {
      this.options = options;
      this.socket = null;
      this.attempt = 0;
      this.timer = null;
      this.pinger = null;
      this.lastFrameAt = 0;
      this.stopped = false;
      this.live = false;
      this.lastError = null;
      document.addEventListener("visibilitychange", () => {
        if (document.visibilityState === "visible") this.reconnectNow();
      });
      window.addEventListener("online", () => this.reconnectNow());
    }

    url() {
      const scheme = window.location.protocol === "https:" ? "wss:" : "ws:";
      const query = this.options.query ? this.options.query() : "";
      return scheme + "//" + window.location.host + this.options.path + query;
    }

    start() {
      this.stopped = false;
      this.connect();
    }

    stop(text) {
      this.stopped = true;
      clearTimeout(this.timer);
      if (this.socket) this.socket.close(1000);
      this.setLive(false, text);
    }

    connect() {
      clearTimeout(this.timer);
      this.timer = null;
      let socket;
      try {
        socket = new WebSocket(this.url());
      } catch (error) {
        this.scheduleReconnect(null);
        return;
      }
      this.socket = socket;
      this.lastError = null;
      socket.addEventListener("open", () => {
        if (socket !== this.socket) return;
        this.lastFrameAt = Date.now();
        this.setLive(true);
        this.startPinging();
        if (this.options.onOpen) this.options.onOpen();
      });
      socket.addEventListener("message", (event) => {
        if (socket !== this.socket) return;
        this.lastFrameAt = Date.now();
        // A frame means the server took us: only now forget the failed attempts (a server that
        // accepts and closes at once must not be hammered).
        this.attempt = 0;
        let message;
        try {
          message = JSON.parse(event.data);
        } catch (error) {
          return; // not the protocol's JSON; nothing to do with it
        }
        if (message && message.type === "error" && message.code) this.lastError = message;
        if (message && message.type === "pong") return;
        this.options.onMessage(message);
      });
      socket.addEventListener("close", (event) => {
        if (socket !== this.socket) return;
        this.socket = null;
        this.stopPinging();
        this.setLive(false);
        if (this.options.onDown) this.options.onDown();
        const detail = this.lastError ? this.lastError.detail : "";
        if (FINAL.has(event.code)) {
          this.stopped = true;
          if (this.options.onRefused) this.options.onRefused(event.code, detail);
          this.setLive(false, "offline");
          return;
        }
        if (DENIED.has(event.code) && this.options.onRefused) this.options.onRefused(event.code, detail);
        this.scheduleReconnect(event.code);
      });
      // "error" is always followed by "close", which does the work.
    }

    scheduleReconnect(code) {
      if (this.stopped) return;
      clearTimeout(this.timer);
      let delay;
      if (DENIED.has(code)) {
        delay = DENIED_DELAY_MS;
      } else {
        delay = Math.min(MAX_DELAY_MS, BASE_DELAY_MS * Math.pow(2, this.attempt));
        delay = delay / 2 + Math.random() * (delay / 2); // jitter: browsers do not all return at once
      }
      this.attempt += 1;
      this.timer = setTimeout(() => this.connect(), delay);
    }

    reconnectNow() {
      if (this.stopped || (this.socket && this.socket.readyState <= WebSocket.OPEN)) return;
      this.attempt = 0;
      this.connect();
    }

    send(message) {
      if (!this.socket || this.socket.readyState !== WebSocket.OPEN) return false;
      this.socket.send(JSON.stringify(message));
      return true;
    }

    startPinging() {
      this.stopPinging();
      this.pinger = setInterval(() => {
        if (!this.socket) return;
        if (Date.now() - this.lastFrameAt > SILENCE_MS) {
          this.socket.close(4000); // dead: the close handler reconnects
          return;
        }
        this.send({ action: "ping" });
      }, PING_EVERY_MS);
    }

    stopPinging() {
      clearInterval(this.pinger);
      this.pinger = null;
    }

    setLive(live, text) {
      this.live = live;
      const status = statusElements();
      if (status.text) status.text.textContent = text || (live ? "live" : "reconnecting");
      if (status.box) status.box.dataset.state = live ? "live" : "down";
    }
  }

  window.LiveSocket = LiveSocket;

  // Small helpers both pages use.
  window.LivePage = {
    /** Timestamps of the contract ("...T12:00:00.123456Z") as milliseconds; Date.parse wants at most 3 digits. */
    parseTime: function (text) {
      if (!text) return NaN;
      return Date.parse(String(text).replace(/(\.\d{3})\d+/, "$1"));
    },
    /** A page-level notice that goes away by itself. */
    notify: function (container, text, kind) {
      if (!container) return;
      const item = document.createElement("p");
      item.className = "notice" + (kind ? " " + kind : "");
      item.textContent = text;
      container.prepend(item);
      while (container.children.length > 5) container.lastElementChild.remove();
      setTimeout(() => item.remove(), 12000);
    },
  };
})();
