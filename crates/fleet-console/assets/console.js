// Lichen fleet console: live refresh of the page parts marked data-live="<fragment url>".
// Pages work without this script; it only keeps those parts current. Each part is fetched
// again every data-interval milliseconds (default 3000) while the tab is visible, and its
// HTML replaced unless the keyboard focus is inside it.
"use strict";
(function () {
  function refresh(el) {
    if (document.hidden) return;
    // Never pull content from under the keyboard focus (a focused link or a field being typed in).
    if (el.contains(document.activeElement)) return;
    fetch(el.dataset.live, { headers: { "x-console-fragment": "1" }, credentials: "same-origin" })
      .then(function (r) {
        if (r.status === 401) { window.location.reload(); return null; }
        return r.ok ? r.text() : null;
      })
      .then(function (html) {
        if (html !== null && html !== undefined && html !== el.innerHTML) {
          el.innerHTML = html;
          el.setAttribute("data-refreshed", String(Date.now()));
        }
      })
      .catch(function () { /* the next tick tries again */ });
  }
  function start() {
    var warn = document.getElementById("insecure-context");
    if (warn && !window.isSecureContext) warn.hidden = false;
    document.querySelectorAll("[data-live]").forEach(function (el) {
      var every = parseInt(el.dataset.interval || "3000", 10);
      setInterval(function () { refresh(el); }, every);
    });
    // Confirm destructive actions (a plain form POST without the script).
    document.querySelectorAll("form[data-confirm]").forEach(function (f) {
      f.addEventListener("submit", function (e) {
        if (!window.confirm(f.dataset.confirm)) e.preventDefault();
      });
    });
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
