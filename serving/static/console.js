// The reviewer page: claim, label with the keyboard, submit, skip, undo. No framework, no build step.
"use strict";
(() => {
  const $ = (id) => document.getElementById(id);
  const undoSeconds = Number($("console").dataset.undoSeconds || "0");
  let current = null;     // the item on screen (with its lease token)
  let lastDecided = null; // {review_id, labels, note, at}
  let skipped = [];       // items released in this page, not offered again right away
  let timer = null;
  // Actions run one after another: a key pressed while a request is in flight waits its turn
  // (pressing U right after Enter undoes, even while the next item is being claimed).
  let chain = Promise.resolve();
  const run = (fn) => () => { chain = chain.then(fn).catch((e) => status(String(e), "error")); return chain; };

  function status(text, cls) {
    const el = $("status");
    el.textContent = text;
    el.className = "status" + (cls ? " " + cls : "");
  }

  async function call(method, url, body) {
    const opts = {method, credentials: "same-origin", headers: {}};
    if (body !== undefined) {
      opts.headers["Content-Type"] = "application/json";
      opts.body = JSON.stringify(body);
    }
    const r = await fetch(url, opts);
    if (r.status === 204) return {status: 204, data: null};
    let data = null;
    try { data = await r.json(); } catch (e) { data = null; }
    if (r.status === 401) { location.reload(); }
    return {status: r.status, data};
  }

  function errorText(res) {
    const d = res.data || {};
    return `${d.error || res.status}：${d.message || "请求失败"}`;
  }

  async function refreshQueue() {
    const res = await call("GET", "/review/api/queue");
    if (res.status !== 200) return;
    const body = $("queue-body");
    body.textContent = "";
    if (!res.data.rows.length) {
      const tr = body.insertRow();
      const td = tr.insertCell();
      td.colSpan = 4;
      td.textContent = "队列为空";
      return;
    }
    for (const row of res.data.rows) {
      const tr = body.insertRow();
      tr.insertCell().textContent = row.name_zh;
      tr.insertCell().textContent = row.band_zh;
      tr.insertCell().textContent = row.open;
      tr.insertCell().textContent = row.age_zh;
    }
  }

  function renderText(item) {
    const box = $("item-text");
    box.textContent = "";
    for (const seg of item.segments) {
      if (!seg.span.length && !seg.term.length) {
        box.appendChild(document.createTextNode(seg.text));
        continue;
      }
      const mark = document.createElement("mark");
      mark.textContent = seg.text;
      mark.className = (seg.term.length ? "hl-term" : "") + (seg.span.length ? " hl-span" : "");
      mark.title = [...new Set([...seg.term.map((c) => "命中词 " + c), ...seg.span.map((c) => "打分窗口 " + c)])].join("；");
      mark.dataset.categories = [...new Set([...seg.term, ...seg.span])].join(" ");
      box.appendChild(mark);
    }
  }

  function renderMeta(item) {
    const meta = $("item-meta");
    meta.textContent = "";
    const rows = [
      ["条目 review_id", item.review_id], ["来源 id（调用方）", item.id === null ? "（无）" : item.id],
      ["请求 request_id", item.request_id || "（无）"], ["入队时间", new Date(item.created_at).toLocaleString("zh-CN")],
      ["模型", `${item.model.name} ${item.model.version}`], ["判定时策略", item.policy_version],
      ["模型判定", item.decision], ["判定依据类别", item.categories.join(", ") || "（无）"],
    ];
    for (const [k, v] of rows) {
      const dt = document.createElement("dt"); dt.textContent = k;
      const dd = document.createElement("dd"); dd.textContent = v;
      meta.append(dt, dd);
    }
    $("policy-version").textContent = item.current_policy_version;
    const body = $("scores-body");
    body.textContent = "";
    for (const s of item.scores) {
      const tr = body.insertRow();
      if (s.behind_decision) tr.className = "behind";
      tr.insertCell().textContent = `${s.name_zh} ${s.category}`;
      tr.insertCell().textContent = s.score.toFixed(3);
      tr.insertCell().textContent = s.review_threshold.toFixed(3);
      tr.insertCell().textContent = s.block_threshold.toFixed(3);
      tr.insertCell().textContent = s.behind_decision ? "◀ 依据" : "";
    }
    const reasons = $("reasons");
    reasons.textContent = "";
    for (const r of item.reasons) {
      const li = document.createElement("li");
      const frag = item.text.slice ? Array.from(item.text).slice(r.span[0], r.span[1]).join("") : "";
      li.textContent = `${r.category}：${r.kind}，分数 ${r.score.toFixed(3)} / 阈值 ${r.threshold.toFixed(3)}，位置 [${r.span[0]}, ${r.span[1]})「${frag}」`;
      reasons.appendChild(li);
    }
    for (const m of item.matches) {
      const li = document.createElement("li");
      li.textContent = `${m.category}：命中词「${m.term}」，位置 [${m.start}, ${m.end})`;
      reasons.appendChild(li);
    }
  }

  function setLabels(labels) {
    for (const box of document.querySelectorAll("input[name=label]")) box.checked = labels.includes(box.value);
    $("harmless").checked = false;
  }

  function show(item, labels, note) {
    current = item;
    $("item").hidden = false;
    $("item-kind").textContent = item.kind_zh + " " + item.kind;
    $("item-decision").textContent = "模型：" + item.decision;
    renderText(item);
    renderMeta(item);
    setLabels(labels || []);
    $("note").value = note || "";
    startCountdown();
  }

  function startCountdown() {
    if (timer) clearInterval(timer);
    const tick = () => {
      if (!current) return;
      const left = Math.round((new Date(current.lease_expires_at) - Date.now()) / 1000);
      const el = $("lease-countdown");
      if (left <= 0) {
        el.textContent = "已过期";
        el.className = "expired";
        return;
      }
      el.textContent = `${String(Math.floor(left / 60)).padStart(2, "0")}:${String(left % 60).padStart(2, "0")}`;
      el.className = left < 30 ? "expiring" : "";
    };
    tick();
    timer = setInterval(tick, 1000);
  }

  function clearItem(message) {
    current = null;
    $("item").hidden = true;
    if (timer) clearInterval(timer);
    if (message) status(message);
  }

  async function claimNext(prefix) {
    const before = prefix ? prefix + " " : "";
    try {
      const body = {order: $("filter-order").value, skip: skipped.slice(-200)};
      if ($("filter-category").value) body.category = $("filter-category").value;
      if ($("filter-band").value) body.band = $("filter-band").value;
      const res = await call("POST", "/review/api/claim", body);
      if (res.status === 204) {
        clearItem(before + (skipped.length ? "没有更多条目（已跳过的条目稍后会重新出现）。" : "队列中没有符合条件的条目。"));
      } else if (res.status === 200) {
        show(res.data);
        status(`${before}已领取 ${res.data.review_id}`, prefix ? "ok" : "");
      } else {
        status(errorText(res), "error");
      }
    } finally {
      refreshQueue();
    }
  }

  function chosenLabels() {
    return [...document.querySelectorAll("input[name=label]:checked")].map((b) => b.value);
  }

  async function submit() {
    if (!current) return;
    const labels = chosenLabels();
    if (!labels.length && !$("harmless").checked) {
      status("请先选择类别（1–9）或无害（0），再提交。", "error");
      return;
    }
    const item = current;
    const note = $("note").value.trim();
    const res = await call("POST", `/review/api/items/${item.review_id}/decision`,
      {labels, note: note || null, lease_token: item.lease_token});
    if (res.status !== 200) { status(errorText(res), "error"); return; }
    lastDecided = {item, labels: res.data.labels, note, at: Date.now()};
    $("undo").disabled = false;
    clearItem();
    const done = `已提交 ${item.review_id}：${res.data.labels.join(", ") || "harmless"}（${undoSeconds} 秒内可按 U 撤销）。`;
    status(done, "ok");
    await claimNext(done);
  }

  async function skip() {
    if (!current) return;
    const item = current;
    const res = await call("POST", `/review/api/items/${item.review_id}/release`, {lease_token: item.lease_token});
    if (res.status !== 200) { status(errorText(res), "error"); return; }
    skipped.push(item.review_id);
    clearItem(`已跳过 ${item.review_id}，已放回队列。`);
    await claimNext(`已跳过 ${item.review_id}，已放回队列。`);
  }

  async function undo() {
    if (!lastDecided) return;
    if (Date.now() - lastDecided.at > undoSeconds * 1000) {
      status("撤销期限已过。", "error");
      $("undo").disabled = true;
      return;
    }
    try {
      if (current) { // give the item on screen back first
        await call("POST", `/review/api/items/${current.review_id}/release`, {lease_token: current.lease_token});
        current = null;
      }
      const res = await call("POST", `/review/api/items/${lastDecided.item.review_id}/undo`);
      if (res.status !== 200) { status(errorText(res), "error"); return; }
      show(res.data, lastDecided.labels, lastDecided.note);
      status(`已撤销 ${res.data.review_id} 的判定，请重新判定。`, "ok");
      lastDecided = null;
      $("undo").disabled = true;
    } finally {
      refreshQueue();
    }
  }

  function toggle(key) {
    if (!current) return;
    if (key === "0") {
      setLabels([]);
      $("harmless").checked = true;
      return;
    }
    const box = document.querySelector(`input[name=label][data-key="${key}"]`);
    if (box) { box.checked = !box.checked; $("harmless").checked = false; }
  }

  const doSubmit = run(submit);
  const doSkip = run(skip);
  const doUndo = run(undo);
  const doClaim = run(() => (current ? undefined : claimNext()));

  document.addEventListener("keydown", (ev) => {
    const inNote = ev.target === $("note");
    if (inNote) {
      if (ev.key === "Escape") $("note").blur();
      else if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey)) { ev.preventDefault(); doSubmit(); }
      return;
    }
    if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
    if (["INPUT", "SELECT", "TEXTAREA"].includes(ev.target.tagName) && ev.target.type !== "checkbox") return;
    const k = ev.key;
    if (/^[0-9]$/.test(k)) { ev.preventDefault(); toggle(k); }
    else if (k === "Enter") { ev.preventDefault(); doSubmit(); }
    else if (k === "s" || k === "S") { ev.preventDefault(); doSkip(); }
    else if (k === "u" || k === "U") { ev.preventDefault(); doUndo(); }
    else if (k === "n" || k === "N") { ev.preventDefault(); doClaim(); }
  });
  $("harmless").addEventListener("change", () => { if ($("harmless").checked) setLabels([]), $("harmless").checked = true; });
  for (const box of document.querySelectorAll("input[name=label]")) {
    box.addEventListener("change", () => { if (box.checked) $("harmless").checked = false; });
  }
  $("claim-next").addEventListener("click", doClaim);
  $("submit").addEventListener("click", doSubmit);
  $("skip").addEventListener("click", doSkip);
  $("undo").addEventListener("click", doUndo);
  const out = $("sign-out");
  if (out) out.addEventListener("click", async () => { await call("POST", "/review/api/session/end"); location.reload(); });
  refreshQueue();
  setInterval(refreshQueue, 15000);
})();
