// Sign-in: send the key once as JSON; the server answers with an HttpOnly session cookie.
"use strict";
document.getElementById("login-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const err = document.getElementById("login-error");
  err.hidden = true;
  const key = document.getElementById("api-key").value.trim();
  const r = await fetch("/review/api/session", {
    method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify({key}),
    credentials: "same-origin",
  });
  if (r.ok) { location.reload(); return; }
  let msg = "登录失败";
  try { const b = await r.json(); msg = `登录失败（${b.error}）：${b.message}`; } catch (e) { /* not JSON */ }
  err.textContent = msg;
  err.hidden = false;
});
