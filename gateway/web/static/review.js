// Progressive enhancement only: every page works without this file.
document.addEventListener("change", (event) => {
  const el = event.target;
  if (el instanceof HTMLElement && el.hasAttribute("data-autosubmit") && el.form) el.form.requestSubmit();
});
document.addEventListener("submit", (event) => {
  const form = event.target;
  const question = form instanceof HTMLFormElement && form.dataset.confirm;
  if (question && !window.confirm(question)) event.preventDefault();
});
document.addEventListener("keydown", (event) => {
  const el = event.target;
  if (event.key === "Enter" && (event.ctrlKey || event.metaKey) && el instanceof HTMLTextAreaElement && el.form) {
    el.form.requestSubmit();
  }
});
