// Lanyard admin portal: progress of long actions. An element with data-poll="URL" is refreshed
// from that JSON endpoint ({text, waiting; acknowledged and total for a bar}) until nothing is
// waiting: a command's progress, or an ABM sync's.
(function () {
  "use strict";
  function poll(el) {
    var url = el.getAttribute("data-poll");
    var bar = document.getElementById("progress-bar");
    fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (p) {
        if (!p) { return; }
        el.textContent = p.text;
        if (bar) { bar.max = p.total; bar.value = p.acknowledged; }
        if (p.waiting > 0) { setTimeout(function () { poll(el); }, 2000); }
      })
      .catch(function () { setTimeout(function () { poll(el); }, 5000); });
  }
  document.addEventListener("DOMContentLoaded", function () {
    var els = document.querySelectorAll("[data-poll]");
    for (var i = 0; i < els.length; i++) { poll(els[i]); }
  });
})();
