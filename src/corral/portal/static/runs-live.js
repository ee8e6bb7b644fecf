// Corral portal: live run status on the runs list, from GET /ui/runs/events (Server-Sent Events).
// A static file, no inline script (the CSP allows only 'self'). While the stream is open it
// replaces the table's 2 s htmx polling: each "run" event updates that run's status badge at
// once and asks htmx (event "runs-changed") to reload the table for its other columns. When the
// stream fails (no EventSource, an error, a 401), htmx's polling runs as before.
(function () {
  "use strict";
  var STATUS = /^[A-Z_]{1,24}$/;
  var streaming = false;
  var pending = null;

  function table() { return document.getElementById("runs-table"); }

  function badgeOf(runId) {
    var rows = document.querySelectorAll("#runs-table tr[data-run-id]");
    for (var i = 0; i < rows.length; i++) {
      if (rows[i].getAttribute("data-run-id") === runId) {
        return rows[i].querySelector("td.run-status .badge");
      }
    }
    return null;
  }

  function onRun(event) {
    var change;
    try { change = JSON.parse(event.data); } catch (e) { return; }
    if (!change || typeof change.id !== "string" || !STATUS.test(change.status)) { return; }
    var badge = badgeOf(change.id);
    if (badge && badge.textContent !== change.status) {
      badge.textContent = change.status;
      badge.className = "badge " + change.status;
    }
    if (pending === null) {  // one reload for a burst of events
      pending = window.setTimeout(function () {
        pending = null;
        var element = table();
        if (element && window.htmx) { window.htmx.trigger(element, "runs-changed"); }
      }, 300);
    }
  }

  function start() {
    var element = table();
    var url = element && element.getAttribute("data-events");
    if (!url || !window.EventSource) { return; }
    var source = new EventSource(url);
    source.addEventListener("open", function () { streaming = true; });
    source.addEventListener("error", function () {
      streaming = false;
      if (source.readyState === EventSource.CLOSED) { source.close(); }
    });
    source.addEventListener("run", onRun);
    // While the stream is open, the table's own polling is redundant: cancel it.
    document.body.addEventListener("htmx:beforeRequest", function (event) {
      var detail = event.detail || {};
      var trigger = detail.requestConfig && detail.requestConfig.triggeringEvent;
      if (streaming && detail.elt && detail.elt.id === "runs-table" &&
          !(trigger && trigger.type === "runs-changed")) {
        event.preventDefault();
      }
    });
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
