/*
 * EventbusTime: the pages' one date format, the server's (eventbus_project/formats, TIME_ZONE UTC).
 *   format(iso)  "2026-12-05 15:00:07 UTC"   DATETIME_FORMAT "Y-m-d H:i:s T"
 *   clock(iso)   "15:00:07.250 UTC"          TIME_FORMAT "H:i:s T", with milliseconds (the live feed)
 */
(function () {
  "use strict";

  function pad(number, width) {
    return String(number).padStart(width || 2, "0");
  }

  // Contract timestamps carry microseconds ("...T12:00:00.123456Z"); Date.parse wants at most 3 digits.
  function parse(text) {
    return new Date(Date.parse(String(text).replace(/(\.\d{3})\d+/, "$1")));
  }

  function time(moment) {
    return pad(moment.getUTCHours()) + ":" + pad(moment.getUTCMinutes()) + ":" + pad(moment.getUTCSeconds());
  }

  function format(iso) {
    const moment = parse(iso);
    if (Number.isNaN(moment.getTime())) return String(iso);
    const date = moment.getUTCFullYear() + "-" + pad(moment.getUTCMonth() + 1) + "-" + pad(moment.getUTCDate());
    return date + " " + time(moment) + " UTC";
  }

  function clock(iso) {
    const moment = parse(iso);
    if (Number.isNaN(moment.getTime())) return String(iso);
    return time(moment) + "." + pad(moment.getUTCMilliseconds(), 3) + " UTC";
  }

  window.EventbusTime = { format: format, clock: clock };
})();
