// CEREDIS Edge — the only script of the UI (the CSP forbids inline script).
// Pages work without it; it only refreshes roster import progress.
(function () {
  "use strict";
  var job = document.getElementById("roster-job");
  if (!job || job.getAttribute("data-finished") === "true") return;
  var url = job.getAttribute("data-status-url");
  var bar = document.getElementById("roster-progress");
  function poll() {
    fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (r) { return r.json(); })
      .then(function (s) {
        if (s.report || s.failure) { window.location.reload(); return; }
        if (bar) { bar.max = Math.max(1, s.total); bar.value = s.done; }
        setTimeout(poll, 700);
      })
      .catch(function () { setTimeout(poll, 2000); });
  }
  setTimeout(poll, 500);
})();
