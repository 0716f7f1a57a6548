// The console works without this script; it adds: confirmation dialogs, a copy button, live overview charts.
"use strict";
document.addEventListener("submit", (event) => {
  const question = event.target.dataset.confirm;
  if (question && !window.confirm(question)) event.preventDefault();
});
document.addEventListener("click", (event) => {
  const id = event.target.dataset && event.target.dataset.copy;
  if (id && navigator.clipboard) {
    navigator.clipboard.writeText(document.getElementById(id).textContent).then(
      () => { event.target.textContent = "Copied"; }, () => {});
  }
});
const charts = document.getElementById("charts");
if (charts && charts.dataset.refresh) {
  setInterval(async () => {
    try {
      const answer = await fetch(charts.dataset.refresh, {credentials: "same-origin"});
      if (answer.ok && !answer.redirected) charts.innerHTML = await answer.text();
    } catch (e) { /* the gateway restarts: keep the last charts */ }
  }, 10000);
}
