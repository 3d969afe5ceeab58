// FaceLock's panel: four pages over the JSON API (docs/API.md). No framework, no build step.
// Every URL is built from the base path the server put in <body data-base> (Home Assistant
// ingress serves the panel under /api/hassio_ingress/<token>/), and every change carries the
// CSRF token from <body data-csrf>. Text from the server is set with textContent, never as HTML.
"use strict";

const BASE = document.body.dataset.base || "";
const CSRF = document.body.dataset.csrf || "";
const main = document.getElementById("main");
let T = {};
let cleanup = [];

function t(key, vars = {}) {
  let text = T[key] || key;
  for (const [name, value] of Object.entries(vars)) text = text.replaceAll(`{${name}}`, value);
  return text;
}

const url = (path) => `${BASE}/${path}`;

async function api(path, { method = "GET", json, form } = {}) {
  const headers = {};
  let body;
  if (method !== "GET") headers["X-FaceLock-CSRF"] = CSRF;
  if (json !== undefined) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(json);
  } else if (form !== undefined) {
    body = form;
  }
  const response = await fetch(url(path), { method, headers, body, credentials: "same-origin" });
  let data = {};
  try { data = await response.json(); } catch (_) { data = { error: response.statusText }; }
  return { ok: response.ok, status: response.status, data };
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "text") node.textContent = value;
    else if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child !== null && child !== undefined) node.append(child);
  }
  return node;
}

function toast(message, bad = false) {
  const box = document.getElementById("toast");
  box.textContent = message;
  box.className = bad ? "bad" : "";
  box.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { box.hidden = true; }, 6000);
}

const when = (ts) => new Date(ts * 1000).toLocaleString();
const fixed = (value, digits = 3) => (value === null || value === undefined ? "–" : Number(value).toFixed(digits));

function every(ms, fn) {
  const id = setInterval(fn, ms);
  cleanup.push(() => clearInterval(id));
}

// ---- Doors ----------------------------------------------------------------------------------

async function doorsPage() {
  const { data } = await api("api/doors");
  const list = el("div", { class: "cards" });
  if (!data.doors.length) list.append(el("p", { text: t("doors.empty") }));
  const cards = data.doors.map((door) => doorCard(door));
  list.append(...cards.map((c) => c.node));
  every(3000, async () => {
    const fresh = await api("api/doors");
    if (fresh.ok) fresh.data.doors.forEach((door, i) => cards[i] && cards[i].update(door));
  });
  return [el("h1", { text: t("doors.title") }), list];
}

function doorCard(door) {
  const state = el("span", { class: "badge", "data-testid": "lock-state" });
  const figures = el("p", { class: "figures" });
  const lockout = el("p", { class: "warn" });
  const pin = door.pin_required ? el("input", { type: "password", inputmode: "numeric", placeholder: t("doors.pin"), "aria-label": t("doors.pin"), size: 8 }) : null;
  const act = (action) => async () => {
    const result = await api(`api/doors/${encodeURIComponent(door.name)}/${action}`, { method: "POST", json: pin && pin.value ? { pin: pin.value } : {} });
    if (pin) pin.value = "";
    toast(result.ok ? t("doors.done", { door: door.name, state: result.data.state }) : result.data.error, !result.ok);
  };
  const live = door.live ? el("img", { class: "live", alt: t("doors.live"), src: url(door.live) }) : null;
  if (live) cleanup.push(() => { live.src = ""; });  // closes the stream: the door stops keeping frames
  const update = (d) => {
    state.textContent = d.state;
    state.dataset.state = d.state;
    const sensors = d.sensors || {};
    figures.textContent = [
      `${t("doors.fps")} ${fixed(sensors.fps, 1)}`,
      `${t("doors.gate")} ${fixed(sensors.gate_pass_rate, 1)} %`,
      `${t("doors.latency")} ${d.last_latency_ms === null ? "–" : `${Math.round(d.last_latency_ms)} ms`}`,
      `${t("doors.liveness")} ${d.liveness}`,
    ].join(" · ");
    lockout.textContent = d.lockout.locked ? t("doors.lockout", { seconds: Math.round(d.lockout.remaining_s), failures: d.lockout.failures }) : "";
  };
  update(door);
  const node = el("section", { class: "card door" },
    el("h2", { text: door.name }),
    el("p", {}, `${t("doors.state")}: `, state),
    el("div", { class: "row" }, pin,
      el("button", { onclick: act("lock"), text: t("doors.lock") }),
      el("button", { onclick: act("unlock"), text: t("doors.unlock") }),
      el("button", { onclick: act("open"), text: t("doors.open") })),
    lockout, figures,
    live && el("figure", {}, live, el("figcaption", { text: t("doors.live_hint") })));
  return { node, update };
}

// ---- People ---------------------------------------------------------------------------------

function verdictList(verdicts) {
  return el("ul", { class: "verdicts" }, verdicts.map((v) => el("li", { class: v.ok ? "ok" : "bad" },
    v.crop ? el("img", { src: v.crop, alt: v.photo, width: 56, height: 56 }) : el("span", { class: "noface", text: "✕" }),
    el("span", { text: `${v.photo}: ${v.ok ? t("people.verdict_ok") : v.reason}` }))));
}

async function peoplePage() {
  const { data } = await api("api/people");
  const doors = (await api("api/doors")).data.doors;
  const name = el("input", { name: "person", required: true, maxlength: 64, "aria-label": t("people.name"), placeholder: t("people.name") });
  const files = el("input", { type: "file", name: "image", accept: "image/jpeg,image/png", multiple: true, "aria-label": t("people.photos") });
  const verdicts = el("div", { "data-testid": "verdicts" });
  const send = (check) => async (event) => {
    event.preventDefault();
    if (!name.value.trim()) return toast(t("people.need_name"), true);
    if (!files.files.length) return toast(t("people.need_photos"), true);
    const form = new FormData();
    for (const file of files.files) form.append("image", file, file.name);
    const result = await api(`api/people/${encodeURIComponent(name.value.trim())}/images${check ? "?check=1" : ""}`, { method: "POST", form });
    verdicts.replaceChildren(result.data.verdicts ? verdictList(result.data.verdicts) : "");
    if (!result.ok) return toast(result.data.error, true);
    if (!check) { toast(t("people.enrolled", { name: result.data.person, count: result.data.added })); render(); }
  };
  const enroll = el("form", { class: "card", onsubmit: send(false) },
    el("h2", { text: t("people.enroll") }),
    el("div", { class: "row" }, name, files,
      el("button", { type: "button", onclick: send(true), text: t("people.check") }),
      el("button", { type: "submit", text: t("people.add") })),
    verdicts,
    doors.length ? cameraEnroll(name, doors) : null);
  const list = el("div", { class: "cards" });
  if (!data.people.length) list.append(el("p", { text: t("people.empty") }));
  for (const person of data.people) list.append(personCard(person, data.model));
  return [el("h1", { text: t("people.title") }), enroll, list];
}

function cameraEnroll(name, doors) {
  const door = el("select", { "aria-label": t("people.camera_door") }, doors.map((d) => el("option", { value: d.name, text: d.name })));
  const shown = el("div");
  const start = async () => {
    if (!name.value.trim()) return toast(t("people.need_name"), true);
    shown.replaceChildren(el("p", { text: t("people.camera_hint") }));
    const result = await api(`api/doors/${encodeURIComponent(door.value)}/capture`, { method: "POST", json: { person: name.value.trim() } });
    if (!result.ok) { shown.replaceChildren(); return toast(result.data.error, true); }
    const confirm = el("button", { text: t("people.camera_confirm"), onclick: async () => {
      const added = await api(`api/people/${encodeURIComponent(name.value.trim())}/capture/${result.data.capture}`, { method: "POST" });
      if (!added.ok) return toast(added.data.error, true);
      toast(t("people.enrolled", { name: added.data.person, count: added.data.added }));
      render();
    } });
    shown.replaceChildren(verdictList(result.data.verdicts), result.data.verdicts.every((v) => v.ok) ? confirm : "");
  };
  return el("div", { class: "camera" }, el("h3", { text: t("people.camera") }),
    el("div", { class: "row" }, door, el("button", { type: "button", onclick: start, text: t("people.camera_start") })), shown);
}

function personCard(person, model) {
  const rename = async () => {
    const fresh = prompt(t("people.new_name", { name: person.name }), person.name);
    if (!fresh || fresh === person.name) return;
    const result = await api(`api/people/${encodeURIComponent(person.name)}/rename`, { method: "POST", json: { name: fresh } });
    result.ok ? render() : toast(result.data.error, true);
  };
  const remove = async () => {
    if (!confirm(t("people.confirm_remove", { name: person.name }))) return;
    const result = await api(`api/people/${encodeURIComponent(person.name)}`, { method: "DELETE" });
    result.ok ? render() : toast(result.data.error, true);
  };
  const templates = person.templates.map((tpl) => {
    const drop = async () => {
      if (!confirm(t("people.confirm_template", { name: person.name }))) return;
      const result = await api(`api/templates/${tpl.id}`, { method: "DELETE" });
      result.ok ? render() : toast(result.data.error, true);
    };
    const keep = async () => {
      const result = await api(`api/templates/${tpl.id}/review`, { method: "DELETE" });
      result.ok ? render() : toast(result.data.error, true);
    };
    const models = tpl.models.map((m) => (m === model ? m.split(":")[0] : `${m.split(":")[0]} (other bundle)`)).join(", ");
    return el("figure", { class: tpl.review ? "template review" : "template", "data-template": tpl.id },
      el("img", { src: url(tpl.crop), alt: `${person.name} #${tpl.id}`, width: 112, height: 112 }),
      el("figcaption", {}, el("span", { text: when(tpl.created) }), el("small", { text: models }),
        tpl.review ? el("strong", { text: t("people.review", { reason: tpl.review }) }) : null,
        el("div", { class: "row" }, tpl.review ? el("button", { onclick: keep, text: t("people.keep") }) : null,
          el("button", { class: "danger", onclick: drop, text: t("common.remove") }))));
  });
  return el("section", { class: "card person", "data-person": person.name },
    el("h2", {}, el("span", { text: person.name }), " ",
      el("small", { text: t("people.templates", { count: person.templates.length }) }),
      person.review ? el("span", { class: "badge warn", text: t("people.review_count", { count: person.review }) }) : null),
    el("div", { class: "row" }, el("button", { onclick: rename, text: t("common.rename") }),
      el("button", { class: "danger", onclick: remove, text: t("common.remove") })),
    el("div", { class: "templates" }, templates));
}

// ---- Events ---------------------------------------------------------------------------------

const filters = { door: "", person: "", outcome: "" };

async function eventsPage() {
  const [doors, people] = [(await api("api/doors")).data.doors, (await api("api/people")).data.people];
  const select = (key, label, options) => el("select", { "aria-label": key, onchange: (e) => { filters[key] = e.target.value; render(); } },
    el("option", { value: "", text: label }),
    options.map(([value, text]) => el("option", { value, text, selected: filters[key] === value })));
  const query = new URLSearchParams({ limit: "100", ...Object.fromEntries(Object.entries(filters).filter(([, v]) => v)) });
  const { data } = await api(`api/events?${query}`);
  const bar = el("div", { class: "row filters" },
    select("door", t("events.all_doors"), doors.map((d) => [d.name, d.name])),
    select("person", t("events.all_people"), people.map((p) => [p.name, p.name])),
    select("outcome", t("events.all_outcomes"), ["recognized", "denied", "spoof_suspected"].map((o) => [o, t(`outcome.${o}`)])));
  const list = el("ol", { class: "timeline" });
  if (!data.events.length) list.append(el("li", { text: t("events.empty") }));
  for (const event of data.events) list.append(eventRow(event, people));
  return [el("h1", { text: t("events.title") }), bar, list];
}

// After "that was not me": the marked templates, each with a button to remove it at once.
function removalOffer(person, ids) {
  const offer = el("div", { class: "templates offer" }, el("p", { text: t("events.offer", { name: person }) }));
  for (const id of ids) {
    const figure = el("figure", { class: "template review", "data-template": id });
    const drop = async () => {
      const result = await api(`api/templates/${id}`, { method: "DELETE" });
      if (!result.ok) return toast(result.data.error, true);
      figure.replaceChildren(el("p", { text: t("events.removed") }));
    };
    figure.append(
      el("img", { src: url(`api/templates/${id}/crop.png`), alt: `${person} #${id}`, width: 112, height: 112 }),
      el("button", { class: "danger", onclick: drop, text: t("common.remove") }),
    );
    offer.append(figure);
  }
  return offer;
}

function eventRow(event, people) {
  const actions = el("div", { class: "row" });
  const notMe = async () => {
    const result = await api(`api/events/${event.id}/feedback`, { method: "POST", json: { kind: "not_me" } });
    if (!result.ok) return toast(result.data.error, true);
    toast(t("events.reported", { count: result.data.marked.length, name: result.data.person }));
    actions.replaceChildren(removalOffer(result.data.person, result.data.marked));
  };
  const wasMe = () => {
    const who = el("select", { "aria-label": t("events.who") }, people.map((p) => el("option", { value: p.name, text: p.name })));
    const shown = el("div");
    const claim = (add) => async () => {
      const result = await api(`api/events/${event.id}/feedback`, { method: "POST", json: { kind: "was_me", person: who.value, add } });
      const crop = result.data.crop ? el("img", { src: result.data.crop, alt: who.value, width: 56, height: 56 }) : null;
      if (!result.ok) { shown.replaceChildren(crop || "", el("span", { class: "bad", text: result.data.error })); return; }
      if (add) { toast(t("people.enrolled", { name: who.value, count: result.data.added })); render(); return; }
      shown.replaceChildren(crop || "", el("button", { onclick: claim(true), text: t("events.add", { name: who.value }) }));
    };
    actions.replaceChildren(who, el("button", { onclick: claim(false), text: t("events.check") }), shown);
  };
  if (event.outcome === "recognized") actions.append(el("button", { class: "danger", onclick: notMe, text: t("events.not_me") }));
  if (event.outcome === "denied" && event.snapshot && people.length) actions.append(el("button", { onclick: wasMe, text: t("events.was_me") }));
  const facts = [
    event.door, event.person, event.score === null ? null : t("events.score", { score: fixed(event.score), threshold: fixed(event.threshold) }),
    event.frames_used === null ? null : t("events.frames", { frames: event.frames_used }),
    event.liveness === null ? null : t("events.liveness", { value: fixed(event.liveness, 2) }),
    event.latency_ms === null ? null : t("events.latency", { ms: Math.round(event.latency_ms) }),
  ].filter(Boolean).join(" · ");
  return el("li", { class: `event ${event.outcome}`, "data-event": event.id },
    event.snapshot ? el("img", { class: "snapshot", src: url(event.snapshot), alt: `#${event.id}`, loading: "lazy" }) : el("div", { class: "snapshot none" }),
    el("div", {},
      el("p", {}, el("span", { class: `badge ${event.outcome}`, text: t(`outcome.${event.outcome}`) }), " ", el("time", { text: when(event.ts) })),
      el("p", { text: facts }),
      el("p", { class: "reason", text: event.reason || "" }),
      event.feedback.map((f) => el("p", { class: "feedback", text: t("events.feedback", { kind: f.kind }) })),
      actions));
}

// ---- Model & health -------------------------------------------------------------------------

function chart(points, label) {
  const width = 320, height = 80;
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("class", "chart");
  svg.setAttribute("preserveAspectRatio", "none");
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", label);
  if (points.length) {
    const xs = points.map((p) => p[0]), ys = points.map((p) => p[1]);
    const [x0, x1] = [Math.min(...xs), Math.max(...xs) || 1], top = Math.max(...ys, 1e-9);
    const line = document.createElementNS(svg.namespaceURI, "polyline");
    line.setAttribute("points", points.map(([x, y]) => `${((x - x0) / (x1 - x0 || 1)) * width},${height - 4 - (y / top) * (height - 8)}`).join(" "));
    svg.append(line);
    const max = document.createElementNS(svg.namespaceURI, "text");
    max.setAttribute("x", 2); max.setAttribute("y", 10); max.textContent = `max ${fixed(top, 1)}`;
    svg.append(max);
  }
  return el("figure", { class: "metric" }, svg, el("figcaption", { text: points.length ? label : `${label}: ${t("health.no_data")}` }));
}

function bars(decisions) {
  const width = 320, height = 80, outcomes = Object.keys(decisions.counts);
  const hours = decisions.counts[outcomes[0]].length;
  const totals = [...Array(hours).keys()].map((i) => outcomes.reduce((s, o) => s + decisions.counts[o][i], 0));
  const top = Math.max(...totals, 1);
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("class", "chart bars");
  svg.setAttribute("preserveAspectRatio", "none");
  for (let i = 0; i < hours; i++) {
    let y = height;
    for (const outcome of outcomes) {
      const h = (decisions.counts[outcome][i] / top) * (height - 4);
      if (!h) continue;
      const rect = document.createElementNS(svg.namespaceURI, "rect");
      y -= h;
      Object.entries({ x: (i * width) / hours + 1, y, width: width / hours - 2, height: h, class: outcome }).forEach(([k, v]) => rect.setAttribute(k, v));
      svg.append(rect);
    }
  }
  return el("figure", { class: "metric" }, svg, el("figcaption", { text: `${t("health.decisions")}: ${outcomes.map((o) => `${t(`outcome.${o}`)} ${decisions.counts[o].reduce((a, b) => a + b, 0)}`).join(", ")}` }));
}

async function healthPage() {
  const [model, health] = [(await api("api/model")).data, (await api("api/health")).data];
  const cal = model.calibration;
  const rows = cal ? cal.thresholds.map((th) => el("tr", { class: th.far === model.served_threshold.far ? "served" : "" },
    el("td", { text: th.far.toExponential(0) }), el("td", { text: fixed(th.threshold) }),
    el("td", { text: th.n_impostor.toLocaleString() }), el("td", { text: th.tar === null ? "–" : `${(th.tar * 100).toFixed(2)} %` }),
    el("td", { text: th.far === model.served_threshold.far ? t("health.served") : "" }))) : [];
  const charts = Object.entries(health.metrics).map(([door, series]) => el("section", { class: "card" }, el("h3", { text: door }),
    el("div", { class: "charts" }, ["fps", "gate_pass_rate", "decision_latency", "cpu"].map((key) => chart(series[key] || [], t(`metric.${key}`))))));
  return [
    el("h1", { text: t("health.title") }),
    el("section", { class: "card" }, el("h2", { text: t("health.model") }),
      el("p", { text: `${model.name} ${model.version} · ${model.detector} · ${model.embedding_size}-d · ${model.fingerprint}` }),
      model.model_card ? el("p", { text: `${t("health.model_card")}: ${model.model_card}` }) : null,
      model.model_card_text ? el("details", {}, el("summary", { text: t("health.model_card") }), el("pre", { class: "model-card", text: model.model_card_text })) : null,
      cal ? el("h3", { text: t("health.calibration", { dataset: cal.dataset, genuine: cal.genuine_pairs.toLocaleString(), impostor: cal.impostor_pairs.toLocaleString() }) }) : null,
      el("table", {}, el("thead", {}, el("tr", {}, [t("health.far"), t("health.threshold"), t("health.impostors"), t("health.tar"), ""].map((h) => el("th", { text: h })))), el("tbody", {}, rows))),
    el("section", { class: "card" }, el("h2", { text: t("health.liveness") }), el("p", { text: model.liveness })),
    el("section", { class: "card" }, el("h2", { text: t("health.charts") }), bars(health.decisions)),
    ...charts,
    el("section", { class: "card" }, el("h2", { text: t("health.audit") }),
      el("p", { class: health.audit.ok ? "ok" : "bad", "data-testid": "audit", text: health.audit.summary })),
  ];
}

// ---- Router ---------------------------------------------------------------------------------

const PAGES = { doors: doorsPage, people: peoplePage, events: eventsPage, health: healthPage };

async function render() {
  cleanup.forEach((fn) => fn());
  cleanup = [];
  const page = PAGES[location.hash.slice(1)] ? location.hash.slice(1) : "doors";
  document.querySelectorAll("nav a").forEach((a) => a.classList.toggle("active", a.dataset.page === page));
  main.dataset.page = "";
  try {
    main.replaceChildren(...(await PAGES[page]()));
  } catch (error) {
    main.replaceChildren(el("p", { class: "bad", text: t("common.error", { message: error.message }) }));
  }
  main.dataset.page = page;  // tests wait for this: the page is drawn
}

async function start() {
  const langs = (document.body.dataset.langs || "en").split(" ");  // the translations shipped
  const lang = (navigator.language || "en").slice(0, 2);
  const response = await fetch(url(`static/i18n/${langs.includes(lang) ? lang : "en"}.json`));
  if (response.ok) T = await response.json();
  document.querySelectorAll("[data-i18n]").forEach((node) => { node.textContent = t(node.dataset.i18n); });
  window.addEventListener("hashchange", render);
  render();
}

start();
