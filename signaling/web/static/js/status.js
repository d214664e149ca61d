// The status wall: every forum the operator's token opens, polled from
// GET /api/status every 3 s: what is on air, viewers, each source's state
// and what this node receives of it (kb/s, loss, jitter), live and next,
// its restream destinations and recording, and its alerts (source lost,
// destination retrying, recording failed, disk low), as the server lists them.
import {
  describe, localized, mountLanguageSwitch, onLanguageChange, readToken, setPill, showMessage, stateWord, t,
} from "./common.js";

const POLL_MS = 3000;
const token = readToken();
const $ = (id) => document.getElementById(id);
const state = { polls: 0, last: null, fatal: false };
window.forumcastStatus = state; // for tests and support

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value; else node.setAttribute(key, value);
  }
  for (const child of children) if (child !== null && child !== undefined) node.append(child);
  return node;
}

function trackText(track) {
  const parts = [`${track.kind} ${Math.round(track.bitrate_kbps)} kb/s`];
  if (track.loss_ratio !== null) parts.push(`${(track.loss_ratio * 100).toFixed(1)}% ${t("status.loss")}`);
  if (track.jitter_ms !== null) parts.push(`${track.jitter_ms.toFixed(1)} ms ${t("status.jitter")}`);
  return parts.join(", ");
}

function forumCard(forum) {
  const onAir = forum.program.source ? forum.program.source.name : t("watch.slate");
  const sources = forum.sources.map((source) => el("li", { class: `source state-${source.state}`, "data-source": source.id },
    el("span", { class: "who" }, `${source.name} (${source.kind})`), " ",
    el("span", { class: `pill ${source.state === "live" ? "ok" : source.state === "lost" ? "bad" : "warn"}` }, source.state),
    source.id === forum.program.program ? el("span", { class: "pill live" }, t("speak.onAir")) : null,
    ...source.tracks.map((track) => el("span", { class: "track" }, trackText(track)))));
  const alerts = (forum.alerts || []).map(alertText);
  const restreams = (forum.restreams || []).map((r) => el("li", { class: `restream state-${r.state}`, "data-restream": r.id },
    el("span", { class: "who" }, r.name), " ",
    el("span", { class: `pill ${r.state === "live" ? "ok" : r.state === "retrying" ? "bad" : "warn"}` }, stateWord("ctl.rs", r.state)),
    r.state === "live" ? el("span", { class: "track" }, `${Math.round(r.bitrate_kbps)} kb/s`) : null));
  const rec = forum.recording;
  return el("li", { class: `wall-forum${alerts.length ? " alert" : ""}`, "data-forum": forum.id },
    el("h2", {}, localized(forum.name)),
    el("div", { class: "line" }, el("span", { class: "label" }, t("watch.nowOnAir")), " ",
      el("strong", { class: "on-air" }, onAir)),
    el("div", { class: "line" }, el("span", { class: "label" }, t("watch.watching")), " ",
      el("strong", { class: "viewers", "data-viewers": String(forum.viewers.viewers) }, String(forum.viewers.viewers))),
    el("div", { class: "line" }, el("span", { class: "label" }, t("lobby.live")), " ",
      forum.live ? localized(forum.live.title) : "—"),
    el("div", { class: "line recording", "data-state": rec ? rec.state : "idle" },
      el("span", { class: "label" }, t("ctl.recording")), " ",
      el("strong", {}, stateWord("ctl.rec", rec ? rec.state : "idle"))),
    alerts.length ? el("div", { class: "alerts" }, ...alerts.map((text) => el("div", { class: "alert" }, text))) : null,
    el("ul", { class: "sources" }, ...sources),
    restreams.length ? el("ul", { class: "sources restreams" }, ...restreams) : null);
}

function alertText(alert) {
  const text = t(`status.alert.${alert.kind}`, { name: alert.name || "" });
  return alert.detail ? `${text} (${alert.detail})` : text;
}

function render() {
  if (!state.last) return;
  $("wall").replaceChildren(...state.last.forums.map(forumCard));
  const disk = state.last.disk;
  $("disk").hidden = !(disk && disk.low);
  if (disk && disk.low) $("disk").textContent = t("status.diskLow", { gb: (disk.free_bytes / 1e9).toFixed(1) });
}

async function poll() {
  if (state.fatal) return;
  try {
    const response = await fetch("/api/status", { headers: { Authorization: `Bearer ${token}` }, cache: "no-store" });
    const body = await response.json().catch(() => ({}));
    if (!response.ok) {
      const error = body.error || { code: "unavailable", message: `HTTP ${response.status}` };
      if ([401, 403].includes(response.status)) {
        state.fatal = true;
        setPill($("status"), "bad", t("watch.cannot"));
        return showMessage($("message"), "bad", describe(error));
      }
      throw error;
    }
    state.last = body;
    state.polls += 1;
    setPill($("status"), "ok", t("watch.live"));
    showMessage($("message"), "", "");
    render();
  } catch (error) {
    setPill($("status"), "warn", t("watch.unreachable"));
  }
  setTimeout(poll, POLL_MS);
}

mountLanguageSwitch();
onLanguageChange(render);
if (!token) {
  state.fatal = true;
  setPill($("status"), "bad", t("watch.cannot"));
  showMessage($("message"), "bad", describe({ code: "token_missing" }));
} else {
  poll();
}
