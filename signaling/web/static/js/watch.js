// The guest's page: play the forum's program with sound on request, show
// what is on air and how many watch, and recover by itself: socket.io
// reconnects, a failed media connection is re-watched with backoff, and
// when this page's node is gone (socket.io cannot reconnect for
// RELOCATE_AFTER_MS) the page asks another node of the cluster where to
// watch (placement) and opens itself there.
// When WebRTC is blocked (no RTCPeerConnection) or does not connect within
// FALLBACK_AFTER_MS, the page plays the forum's HLS output instead (a few
// seconds behind) and says so.
import {
  applyI18n, backoff, connect, countdown, describe, gatherIce, isFatal, localized, mountLanguageSwitch, onAirText,
  onLanguageChange, pageData, readToken, receivePeer, relocator, request, setPill, setText, showMessage, t,
  viewersText, wireRefusals,
} from "./common.js";
import { MessageList } from "./chat.js";
import { playHls, playlistUrl } from "./hls_player.js";

const data = pageData();
const forumId = data.forum.id;
const $ = (id) => document.getElementById(id);
const ui = {
  status: $("status"), message: $("message"), video: $("program-video"), placeholder: $("placeholder"),
  unmute: $("unmute"), program: $("program"), onAirLabel: $("on-air-label"), viewers: $("viewers"),
  connection: $("connection"), stage: $("stage"), volume: $("volume"), pip: $("pip"), fullscreen: $("fullscreen"),
  forumState: $("forum-state"), sessionTitle: $("session-title"), sessionSpeakers: $("session-speakers"),
  sessionNext: $("session-next"),
};
const AGENDA_REFRESH_MS = 30000;

const DISCONNECTED_GRACE_MS = 4000; // "disconnected" often heals by itself; "failed" does not
// WebRTC not connected this long (first try, or after a drop): a UDP-blocking
// firewall or proxy; ICE alone would take 30 s to give up
// (support and tests may set window.forumcastFallbackMs before this script runs)
const FALLBACK_AFTER_MS = Number(window.forumcastFallbackMs) || 8000;
// on HLS after a timeout, WebRTC is tried again this often in the background (the network may
// have healed); the picture switches back only once the new connection is up
const UPGRADE_EVERY_MS = Number(window.forumcastUpgradeMs) || 60000;

// socket.io not back this long after losing its node: the node is gone, ask placement elsewhere
// (tests may set window.forumcastRelocateMs before this script runs)
const RELOCATE_AFTER_MS = Number(window.forumcastRelocateMs) || 1500;

const state = {
  socket: null, pc: null, viewerId: null, joined: false, fatal: false,
  retry: 0, retryTimer: null, graceTimer: null, watches: 0,
  mode: "webrtc", // "webrtc" | "hls": how the picture reaches this page
  fallbackTimer: null, fallbackReason: null, hls: null, hlsErrors: 0, upgradeTimer: null, upgrades: 0,
};
window.forumcastWatch = state; // for tests and support: read-only inspection

// --- the agenda: what runs now and next, and the forum's state between talks ---

const agenda = { forum: null, offsetMs: 0, reconnecting: false, timer: null };
state.agenda = agenda;

async function refreshAgenda() {
  try {
    const response = await fetch(`/api/forums/${encodeURIComponent(forumId)}`, { cache: "no-store" });
    if (!response.ok) return;
    const forum = await response.json();
    agenda.forum = forum;
    if (forum.now) agenda.offsetMs = Date.parse(forum.now) - Date.now(); // countdowns use the server's clock
    showAgenda();
  } catch (error) { /* informative only: keep the last one */ }
}

function speakerNames(session) {
  const speakers = (agenda.forum && agenda.forum.speakers) || [];
  return session.speakers.map((id) => {
    const found = speakers.find((s) => s.id === id);
    return found ? localized(found.name) : id;
  }).join(", ");
}

// "live" | "not_started" | "break" | "ended" | "reconnecting" (and the banner's words)
function forumState() {
  if (agenda.reconnecting) return ["reconnecting", t("watch.reconnecting")];
  const forum = agenda.forum;
  if (!forum) return ["unknown", ""];
  if (forum.live) return ["live", ""];
  const now = Date.now() + agenda.offsetMs;
  const sessions = forum.sessions || [];
  const first = sessions.length ? Math.min(...sessions.map((x) => Date.parse(x.start))) : null;
  if (first !== null && now < first) return ["not_started", t("watch.notStarted", { t: countdown(first - now) })];
  if (forum.next) {
    return ["break", t("watch.break", { title: localized(forum.next.title), t: countdown(Date.parse(forum.next.start) - now) })];
  }
  return ["ended", t("watch.ended")];
}

function showAgenda() {
  const forum = agenda.forum;
  if (forum) {
    ui.sessionTitle.textContent = forum.live ? localized(forum.live.title) : "—";
    ui.sessionSpeakers.textContent = forum.live ? speakerNames(forum.live) || "—" : "—";
    ui.sessionNext.textContent = forum.next ? localized(forum.next.title) : "—";
  }
  const [name, words] = forumState();
  state.forumState = name;
  ui.forumState.dataset.state = name;
  ui.forumState.textContent = words;
  ui.forumState.hidden = !words;
  const next = forum && (forum.next || forum.live);
  const edge = next && Date.parse(forum.live ? forum.live.end : forum.next.start);
  // a session began or ended: ask again (at most every 5 s, so 1,000 guests do not poll each second)
  if (edge && Date.now() + agenda.offsetMs >= edge && Date.now() - (agenda.asked || 0) > 5000) {
    agenda.asked = Date.now();
    refreshAgenda();
  }
}

function setReconnecting(on) {
  agenda.reconnecting = on;
  showAgenda();
}

// --- chat and Q&A ----------------------------------------------------------------

const chat = new MessageList($("chat"), { filter: (m) => m.public && m.kind === "chat" });
const questions = new MessageList($("questions"), { filter: (m) => m.public && m.kind === "question" });
state.chat = chat;
state.questions = questions;

async function loadChat() {
  try {
    const ack = await request(state.socket, "chat_history", { forum_id: forumId });
    chat.replace(ack.messages);
    questions.replace(ack.messages);
  } catch (error) { /* the chat is beside the point of watching: try at the next join */ }
}

function chatForm(form, input, status, kind) {
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const text = input.value.trim();
    if (!text || !state.joined) return;
    setText(status, "");
    try {
      const ack = await request(state.socket, "chat", { forum_id: forumId, text, kind });
      input.value = "";
      if (kind === "question") setText(status, t("qa.sent"));
      else chat.put(ack.message);
    } catch (error) {
      setText(status, describe(error)); // rate and length limits come with their reason
    }
  });
}

// --- player controls: sound, volume, picture-in-picture, fullscreen ----------------

function setupControls() {
  ui.volume.addEventListener("input", () => {
    ui.video.volume = Number(ui.volume.value);
    if (ui.video.muted && ui.video.volume > 0) { ui.video.muted = false; ui.video.play().catch(() => {}); }
    ui.unmute.textContent = t(ui.video.muted ? "watch.sound" : "watch.mute");
  });
  if (!document.pictureInPictureEnabled) ui.pip.hidden = true;
  ui.pip.addEventListener("click", () => {
    if (document.pictureInPictureElement) document.exitPictureInPicture().catch(() => {});
    else ui.video.requestPictureInPicture().catch(() => {});
  });
  if (!ui.stage.requestFullscreen) ui.fullscreen.hidden = true;
  ui.fullscreen.addEventListener("click", () => {
    if (document.fullscreenElement) document.exitFullscreen().catch(() => {});
    else ui.stage.requestFullscreen().catch(() => {});
  });
}

function fail(error) {
  state.fatal = true;
  clearTimeout(state.retryTimer);
  setPill(ui.status, "bad", t("watch.cannot"));
  showMessage(ui.message, "bad", describe(error));
  ui.placeholder.textContent = t("watch.cannotShow");
  ui.placeholder.hidden = false;
  ui.unmute.hidden = true;
}

function showProgram(program) {
  const text = onAirText(program);
  ui.program.textContent = text;
  ui.onAirLabel.textContent = program && program.program ? t("watch.onAirPrefix", { name: text }) : text;
}

function closePeer() {
  clearTimeout(state.graceTimer);
  if (state.pc) {
    state.pc.onconnectionstatechange = null;
    state.pc.ontrack = null;
    state.pc.close();
    state.pc = null;
  }
}

// --- HLS fallback -----------------------------------------------------------------

function armFallback() {
  if (state.fallbackTimer || state.mode === "hls") return;
  state.fallbackTimer = setTimeout(() => fallBack("timeout"), FALLBACK_AFTER_MS);
}

function disarmFallback() {
  clearTimeout(state.fallbackTimer);
  state.fallbackTimer = null;
}

// reason: "blocked" (no WebRTC in this browser) or "timeout" (it did not connect)
async function fallBack(reason) {
  if (state.mode === "hls" || state.fatal) return;
  state.mode = "hls";
  state.fallbackReason = reason;
  disarmFallback();
  clearTimeout(state.retryTimer);
  closePeer();
  if (state.viewerId && state.socket) { // free the WebRTC seat now, not at the server's timeout
    request(state.socket, "unwatch", { viewer_id: state.viewerId }).catch(() => {});
    state.viewerId = null;
  }
  setReconnecting(false);
  ui.connection.textContent = "HLS";
  setPill(ui.status, "warn", t("watch.hlsStarting"));
  // the last reason WebRTC gave (ICE failed...), when there was one, stays in view
  const why = reason === "blocked" ? t("watch.hlsBlocked")
    : state.lastError ? `${describe(state.lastError)} ${t("watch.hlsInstead")}` : t("watch.hlsWhy");
  showMessage(ui.message, "warn", why);
  try {
    state.hls = await playHls(ui.video, playlistUrl(forumId, readToken()), () => { state.hlsErrors += 1; });
  } catch (error) {
    fail({ code: "unsupported", message: String(error.message || error) });
    return;
  }
  if (reason !== "blocked") state.upgradeTimer = setTimeout(tryUpgrade, UPGRADE_EVERY_MS);
}

// Back from HLS to WebRTC: a second peer is set up while HLS plays on; the
// picture moves over only once it is connected, else it is dropped.
async function tryUpgrade() {
  if (state.mode !== "hls" || state.fatal) return;
  const again = () => { state.upgradeTimer = setTimeout(tryUpgrade, UPGRADE_EVERY_MS); };
  if (!state.joined) return again();
  let stream = null;
  let viewerId = null;
  const pc = receivePeer(state.iceServers, (s) => { stream = s; });
  try {
    await pc.setLocalDescription(await pc.createOffer());
    await gatherIce(pc);
    const ack = await request(state.socket, "watch", { forum_id: forumId, sdp: pc.localDescription.sdp });
    viewerId = ack.viewer_id;
    await pc.setRemoteDescription({ type: "answer", sdp: ack.sdp });
    await new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error("not connected")), FALLBACK_AFTER_MS);
      pc.onconnectionstatechange = () => {
        if (pc.connectionState === "connected") { clearTimeout(timer); resolve(); }
        if (pc.connectionState === "failed") { clearTimeout(timer); reject(new Error("failed")); }
      };
    });
  } catch (error) {
    pc.close();
    if (viewerId) request(state.socket, "unwatch", { viewer_id: viewerId }).catch(() => {});
    return again();
  }
  if (state.mode !== "hls") { pc.close(); return; }
  if (state.hls) state.hls.stop();
  state.hls = null;
  state.mode = "webrtc";
  state.fallbackReason = null;
  state.upgrades += 1;
  state.pc = pc;
  state.viewerId = viewerId;
  state.watches += 1;
  pc.onconnectionstatechange = () => onPeerState(pc);
  if (stream) { ui.video.srcObject = stream; ui.video.play().catch(() => {}); }
  onPeerState(pc); // connected: "Live", the message cleared
}

function webrtcAvailable() {
  return typeof window.RTCPeerConnection === "function";
}

async function watch() {
  if (!state.joined || state.fatal || state.mode === "hls") return;
  clearTimeout(state.retryTimer);
  closePeer();
  if (!webrtcAvailable()) return fallBack("blocked");
  armFallback();
  let pc;
  try {
    pc = receivePeer(state.iceServers, (stream) => {
      if (ui.video.srcObject !== stream) ui.video.srcObject = stream;
      ui.video.play().catch(() => {}); // muted autoplay is allowed; unmuting needs a click
    });
  } catch (error) { // a policy or an extension refused the peer connection
    return fallBack("blocked");
  }
  state.pc = pc;
  pc.onconnectionstatechange = () => onPeerState(pc);
  setPill(ui.status, "warn", t("watch.connectingStream"));
  try {
    await pc.setLocalDescription(await pc.createOffer());
    await gatherIce(pc);
    state.watches += 1;
    const ack = await request(state.socket, "watch", { forum_id: forumId, sdp: pc.localDescription.sdp });
    if (pc !== state.pc) return;
    state.viewerId = ack.viewer_id;
    await pc.setRemoteDescription({ type: "answer", sdp: ack.sdp });
  } catch (error) {
    if (pc !== state.pc) return;
    if (isFatal(error)) return fail(error);
    scheduleRetry(error);
  }
}

function onPeerState(pc) {
  if (pc !== state.pc || state.mode === "hls") return;
  ui.connection.textContent = pc.connectionState;
  clearTimeout(state.graceTimer);
  if (pc.connectionState === "connected") {
    disarmFallback();
    state.lastError = null;
    state.retry = 0;
    setReconnecting(false);
    setPill(ui.status, "ok", t("watch.live"));
    showMessage(ui.message, "", "");
  } else if (pc.connectionState === "failed") {
    scheduleRetry({ code: "ice", message: "the stream connection failed" });
  } else if (pc.connectionState === "disconnected") {
    setPill(ui.status, "warn", t("watch.unsteady"));
    state.graceTimer = setTimeout(() => {
      if (pc === state.pc && pc.connectionState !== "connected") {
        scheduleRetry({ code: "ice", message: "the stream connection was lost" });
      }
    }, DISCONNECTED_GRACE_MS);
  }
}

function scheduleRetry(error) {
  if (state.fatal || state.mode === "hls") return;
  state.lastError = error;
  armFallback();
  const delay = backoff(state.retry++);
  setPill(ui.status, "warn", t("watch.reconnecting"));
  setReconnecting(true);
  showMessage(ui.message, "warn", `${describe(error)} ${t("watch.retryIn", { s: Math.round(delay / 1000) })}`);
  clearTimeout(state.retryTimer);
  state.retryTimer = setTimeout(watch, delay);
}

async function join() {
  try {
    const ack = await request(state.socket, "join", { forum_id: forumId });
    state.iceServers = ack.ice_servers || []; // STUN/TURN, fresh TURN credentials on every join
    state.joined = true;
    ui.viewers.textContent = viewersText(ack.viewers);
    showProgram(ack.program);
    loadChat();
    watch();
    state.cluster.learn();
  } catch (error) {
    if (isFatal(error)) return fail(error);
    if (error.code === "full") {
      showMessage(ui.message, "warn", describe(error));
      clearTimeout(state.retryTimer);
      state.retryTimer = setTimeout(() => join(), backoff(state.retry++, 5000, 60000));
      return;
    }
    scheduleRetry(error);
  }
}

function main() {
  mountLanguageSwitch();
  document.title = `${localized(data.forum.name)} · ${localized(data.event)}`;
  onLanguageChange(() => { document.title = `${localized(data.forum.name)} · ${localized(data.event)}`; });
  const token = readToken();
  if (token) $("lobby-link").href = `/lobby?token=${encodeURIComponent(token)}`;
  setupControls();
  chatForm($("say"), $("say-text"), $("say-status"), "chat");
  chatForm($("ask"), $("ask-text"), $("ask-status"), "question");
  onLanguageChange(showAgenda);
  refreshAgenda();
  agenda.timer = setInterval(showAgenda, 1000); // the countdown
  setInterval(refreshAgenda, AGENDA_REFRESH_MS);
  if (!token && !data.public) return fail({ code: "token_missing" });
  ui.unmute.addEventListener("click", () => {
    ui.video.muted = !ui.video.muted;
    ui.video.play().catch(() => {});
    ui.unmute.textContent = t(ui.video.muted ? "watch.sound" : "watch.mute");
  });
  ui.video.addEventListener("playing", () => {
    ui.placeholder.hidden = true;
    if (state.mode === "hls") setPill(ui.status, "ok", t("watch.hls"));
  });
  const socket = connect(token);
  state.socket = socket;
  // not back soon after a disconnect: the node may be dead (an HLS picture comes from it too)
  state.cluster = relocator(forumId, socket, { afterMs: RELOCATE_AFTER_MS, isFatal: () => state.fatal });
  socket.on("connect", () => {
    state.cluster.connected();
    join();
  });
  socket.on("disconnect", (reason) => {
    state.joined = false; // the server dropped our viewer with the connection
    state.cluster.disconnected(reason);
    if (state.mode === "hls") return; // HLS needs no socket: it plays on
    closePeer();
    if (!state.fatal) setPill(ui.status, "warn", t("watch.serverReconnecting"));
    if (!state.fatal) setReconnecting(true);
  });
  socket.on("program", (program) => { showProgram(program); refreshAgenda(); });
  socket.on("chat_message", (message) => { chat.put(message); questions.put(message); });
  socket.on("chat_removed", (gone) => { chat.remove(gone.id); questions.remove(gone.id); });
  socket.on("viewers", (counts) => { ui.viewers.textContent = viewersText(counts); });
  // the server ended this viewer by itself (ICE never completed, the connection was lost): watch again
  socket.on("media_ended", (payload) => {
    if (!payload || !payload.viewer_id || payload.viewer_id !== state.viewerId || state.mode === "hls") return;
    state.viewerId = null;
    closePeer();
    scheduleRetry(payload.error);
  });
  wireRefusals(socket, { fail, status: ui.status, message: ui.message });
}

main();
