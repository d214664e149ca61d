// The lobby: every forum with what is live now and next and how many
// watch (polling GET /api/forums), the guest's own forums first (from the
// invite's grant), forums the invite does not open shown without a link;
// then the agenda by day and forum, each time in the guest's zone with the
// venue's beside it. Links carry the visitor's invite token.
import { applyI18n, language, localized, mountLanguageSwitch, onLanguageChange, t } from "./common.js";
import { opensForum, readToken, tokenClaims } from "./invite.js";

const POLL_MS = 5000;
const data = JSON.parse(document.getElementById("page-data").textContent);
const token = readToken();
const claims = tokenClaims(token);
const venueZone = data.event.timezone;
const guestZone = Intl.DateTimeFormat().resolvedOptions().timeZone;
const $ = (id) => document.getElementById(id);
let live = { forums: [] }; // the last GET /api/forums

window.forumcastLobby = { guestZone, venueZone, polls: 0 }; // for tests and support

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value; else node.setAttribute(key, value);
  }
  for (const child of children) if (child !== null && child !== undefined) node.append(child);
  return node;
}

function locale() { return language() === "zh" ? "zh-CN" : "en-GB"; }

function clock(iso, timeZone) {
  return new Intl.DateTimeFormat(locale(), { hour: "2-digit", minute: "2-digit", hourCycle: "h23", timeZone })
    .format(new Date(iso));
}

function dayName(iso, timeZone) {
  return new Intl.DateTimeFormat(locale(), { weekday: "long", day: "numeric", month: "long", timeZone })
    .format(new Date(iso));
}

function zoneLabel(zone) { return zone.split("/").pop().replace(/_/g, " "); }

function watchHref(forumId) {
  const url = new URL(`/watch/${encodeURIComponent(forumId)}`, window.location.href);
  if (token) url.searchParams.set("token", token);
  return url.pathname + url.search;
}

function opens(forumId) {
  const open = opensForum(claims, forumId);
  return open === null ? true : open; // no readable grant: link everything, the watch page says why not
}

// "09:00–09:40 · venue 16:00–16:40 (Shanghai)" when the zones differ
function when(session) {
  const mine = el("time", { class: "local", datetime: session.start },
    `${clock(session.start, guestZone)}–${clock(session.end, guestZone)}`);
  if (guestZone === venueZone) return el("span", { class: "when" }, mine);
  const venue = el("span", { class: "venue" },
    `${t("lobby.venueTime")} ${clock(session.start, venueZone)}–${clock(session.end, venueZone)} (${zoneLabel(venueZone)})`);
  return el("span", { class: "when" }, mine, " · ", venue);
}

function card(forum) {
  const status = live.forums.find((f) => f.id === forum.id) || {};
  const open = opens(forum.id);
  const body = [
    el("span", { class: "name" }, localized(forum.name)),
    forum.room && (forum.room.en || forum.room.zh) ? el("span", { class: "room" }, localized(forum.room)) : null,
    el("span", { class: "now" }, status.live
      ? el("span", {}, el("strong", { class: "live-dot" }, t("lobby.live")), " ", localized(status.live.title))
      : t("lobby.nothing")),
    status.next ? el("span", { class: "next" }, `${t("lobby.next")}: ${localized(status.next.title)} `,
      el("time", { datetime: status.next.start }, clock(status.next.start, guestZone))) : null,
    el("span", { class: "viewers", "data-viewers": String(status.viewers ?? "") },
      status.viewers === null || status.viewers === undefined ? "" : t("lobby.watching", { n: status.viewers })),
    open ? null : el("span", { class: "closed-note" }, t("lobby.closed")),
  ];
  const inner = open ? el("a", { class: "watch-link", href: watchHref(forum.id) }, ...body)
    : el("div", { class: "card" }, ...body);
  return el("li", { class: `forum forum-${forum.kind}${open ? "" : " closed"}`, "data-forum": forum.id }, inner);
}

function renderForums() {
  const mine = data.forums.filter((f) => opensForum(claims, f.id) === true && claims.forums !== "*");
  const others = data.forums.filter((f) => !mine.includes(f));
  const first = mine.length ? mine : others;
  $("forums").replaceChildren(...first.map(card));
  $("yours-title").hidden = !mine.length;
  $("others-title").hidden = !mine.length || !others.length;
  $("other-forums").hidden = !mine.length || !others.length;
  $("other-forums").replaceChildren(...(mine.length ? others.map(card) : []));
}

function renderAgenda() {
  $("zones").textContent = guestZone === venueZone
    ? `${zoneLabel(venueZone)}`
    : `${t("lobby.yourTime")}: ${zoneLabel(guestZone)} · ${t("lobby.venueTime")}: ${zoneLabel(venueZone)}`;
  const byDay = new Map(); // venue day -> forum id -> sessions
  for (const forum of data.forums) {
    for (const session of forum.sessions) {
      const day = new Intl.DateTimeFormat("en-CA", { timeZone: venueZone }).format(new Date(session.start));
      if (!byDay.has(day)) byDay.set(day, new Map());
      const forums = byDay.get(day);
      if (!forums.has(forum.id)) forums.set(forum.id, []);
      forums.get(forum.id).push(session);
    }
  }
  const days = [...byDay.keys()].sort();
  const sections = days.map((day) => {
    const forums = byDay.get(day);
    const first = [...forums.values()][0][0];
    const blocks = data.forums.filter((f) => forums.has(f.id)).map((forum) => el("div", { class: "agenda-forum" },
      el("h4", {}, localized(forum.name)),
      el("ul", { class: "sessions" }, ...forums.get(forum.id).map((session) => el("li",
        { class: "session", "data-session": session.id },
        when(session), " ",
        el("span", { class: "title" }, localized(session.title)),
        session.speakers.length ? el("span", { class: "speakers" },
          ` — ${session.speakers.map((id) => localized(data.speakers[id]) || id).join(", ")}`) : null)))));
    return el("section", { class: "agenda-day", "data-day": day }, el("h3", {}, dayName(first.start, venueZone)), ...blocks);
  });
  $("agenda").replaceChildren(...sections);
}

async function poll() {
  try {
    const response = await fetch("/api/forums", { cache: "no-store" });
    if (response.ok) {
      live = await response.json();
      window.forumcastLobby.polls += 1;
      renderForums();
    }
  } catch (e) { /* offline for a moment: keep the last state */ }
  setTimeout(poll, POLL_MS);
}

function render() {
  applyI18n();
  renderForums();
  renderAgenda();
}

mountLanguageSwitch();
onLanguageChange(render);
render();
poll();
