// Lichen fleet console: reads the recipe file chosen on the publish page into its text area,
// so a file is published exactly as a pasted recipe is (one plain form POST).
"use strict";
(function () {
  function start() {
    var input = document.getElementById("recipe-file");
    var area = document.getElementById("recipe");
    if (!input || !area) return;
    input.addEventListener("change", function () {
      var file = input.files && input.files[0];
      if (!file) return;
      var reader = new FileReader();
      reader.onload = function () { area.value = String(reader.result); };
      reader.readAsText(file);
    });
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
