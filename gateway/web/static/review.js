// Progressive enhancement only: every page works without this file.
document.addEventListener("change", (event) => {
  const el = event.target;
  if (el instanceof HTMLElement && el.hasAttribute("data-autosubmit") && el.form) el.form.requestSubmit();
  if (el instanceof HTMLInputElement && el.hasAttribute("data-select-all")) {
    for (const box of document.querySelectorAll('input[type="checkbox"][name="call_id"]')) box.checked = el.checked;
  }
});
document.addEventListener("submit", (event) => {
  const form = event.target;
  const question = form instanceof HTMLFormElement && form.dataset.confirm;
  if (question && !window.confirm(question)) event.preventDefault();
});
// Keyboard: ctrl+enter saves the textarea's form; on a call page, single keys act (see the
// queue bar): j/k next/previous, a/b/t choose, u/d thumbs, x exclude, r relabel, Escape leaves the textarea.
document.addEventListener("keydown", (event) => {
  const el = event.target;
  if (event.key === "Enter" && (event.ctrlKey || event.metaKey) && el instanceof HTMLTextAreaElement && el.form) {
    event.preventDefault();
    el.form.requestSubmit();
    return;
  }
  if (event.key === "Escape" && el instanceof HTMLElement && el.matches("textarea, input, select")) {
    el.blur();
    return;
  }
  if (event.ctrlKey || event.metaKey || event.altKey) return;
  if (el instanceof HTMLElement && el.matches("textarea, input, select, [contenteditable]")) return;
  const target = document.querySelector(`[data-key="${CSS.escape(event.key)}"]`);
  if (!target) return;
  event.preventDefault();
  if (target instanceof HTMLTextAreaElement) {
    target.focus();
    target.select();
  } else if (target instanceof HTMLAnchorElement) {
    window.location.assign(target.href);
  } else if (target instanceof HTMLButtonElement && !target.disabled && target.form) {
    target.form.requestSubmit(target);
  }
});
