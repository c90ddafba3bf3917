// Courier admin console: the only script. No inline handlers (the page's
// Content-Security-Policy forbids them); everything is wired here.
"use strict";

// Set once a form is on its way: the live reload below must not race it.
let leaving = false;

// Forms and links with data-confirm ask first.
document.addEventListener("submit", (e) => {
  const button = e.submitter;
  const text = (button && button.dataset.confirm) || e.target.dataset.confirm;
  if (text && !window.confirm(text)) {
    e.preventDefault();
    return;
  }
  leaving = true;
});
document.addEventListener("click", (e) => {
  const a = e.target.closest("a[data-confirm]");
  if (a && !window.confirm(a.dataset.confirm)) e.preventDefault();
});

// An order page open while its deliveries run follows them: it waits on
// the order's status (a long poll held by the API until it changes) and
// reloads when it does.
(function live() {
  const order = document.querySelector(".order[data-live]");
  if (!order) return;
  const ref = order.dataset.order;
  let status = order.dataset.status;
  const wanted = "completed,failed,refunded,partially_refunded,cancelled,processing,pending"
    .split(",").filter((s) => s !== status).join(",");
  async function poll() {
    if (leaving) return;
    try {
      const r = await fetch(`/admin/orders/${ref}/status?wait_for=${wanted}&timeout=25s`, {
        credentials: "same-origin", headers: { Accept: "application/json" },
      });
      if (r.redirected || r.status === 401) return;
      if (r.ok) {
        const body = await r.json();
        if (leaving) return;
        if (body.status && body.status !== status) {
          const editing = document.activeElement && document.activeElement.matches("input, textarea, select");
          if (editing) {
            document.querySelector(".live-note").hidden = false;
            status = body.status;
          } else {
            window.location.reload();
            return;
          }
        }
      } else {
        await new Promise((res) => setTimeout(res, 5000));
      }
    } catch (_) {
      await new Promise((res) => setTimeout(res, 5000));
    }
    poll();
  }
  poll();
})();

// File uploads: the file itself is the request body (the API streams it to
// storage), so the script sends it, with the CSRF token in a header.
document.addEventListener("submit", async (e) => {
  const form = e.target.closest("form.upload");
  if (!form || e.defaultPrevented) return;
  e.preventDefault();
  leaving = false;
  const file = form.querySelector('input[type="file"]').files[0];
  const out = form.querySelector(".progress");
  if (!file) return;
  const csrf = form.querySelector('input[name="csrf"]').value;
  const url = `/admin/products/${encodeURIComponent(form.dataset.sku)}/files?name=${encodeURIComponent(file.name)}`;
  out.textContent = "Uploading…";
  const r = await fetch(url, {
    method: "POST", body: file, credentials: "same-origin",
    headers: { "Content-Type": file.type || "application/octet-stream", "X-CSRF-Token": csrf },
  });
  if (r.ok) {
    window.location.assign("/admin/products?done=file");
  } else {
    let why = `HTTP ${r.status}`;
    try { why = (await r.json()).error.message; } catch (_) { /* not JSON */ }
    out.textContent = `Refused: ${why}`;
  }
});
