// The guest's page: play the forum's program with sound on request, show
// what is on air and how many watch, and recover by itself: socket.io
// reconnects, and a failed media connection is re-watched with backoff.
import {
  applyI18n, backoff, connect, describe, gatherIce, isFatal, localized, mountLanguageSwitch, onAirText,
  onLanguageChange, pageData, readToken, receivePeer, request, setPill, showMessage, t, viewersText,
} from "./common.js";

const data = pageData();
const forumId = data.forum.id;
const $ = (id) => document.getElementById(id);
const ui = {
  status: $("status"), message: $("message"), video: $("program-video"), placeholder: $("placeholder"),
  unmute: $("unmute"), program: $("program"), onAirLabel: $("on-air-label"), viewers: $("viewers"),
  connection: $("connection"),
};

const DISCONNECTED_GRACE_MS = 4000; // "disconnected" often heals by itself; "failed" does not

const state = {
  socket: null, pc: null, viewerId: null, joined: false, fatal: false,
  retry: 0, retryTimer: null, graceTimer: null, watches: 0,
};
window.forumcastWatch = state; // for tests and support: read-only inspection

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

async function watch() {
  if (!state.joined || state.fatal) return;
  clearTimeout(state.retryTimer);
  closePeer();
  const pc = receivePeer(state.iceServers, (stream) => {
    if (ui.video.srcObject !== stream) ui.video.srcObject = stream;
    ui.video.play().catch(() => {}); // muted autoplay is allowed; unmuting needs a click
  });
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
  if (pc !== state.pc) return;
  ui.connection.textContent = pc.connectionState;
  clearTimeout(state.graceTimer);
  if (pc.connectionState === "connected") {
    state.retry = 0;
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
  if (state.fatal) return;
  const delay = backoff(state.retry++);
  setPill(ui.status, "warn", t("watch.reconnecting"));
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
    watch();
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
  if (!token && !data.public) return fail({ code: "token_missing" });
  ui.unmute.addEventListener("click", () => {
    ui.video.muted = !ui.video.muted;
    ui.video.play().catch(() => {});
    ui.unmute.textContent = t(ui.video.muted ? "watch.sound" : "watch.mute");
  });
  ui.video.addEventListener("playing", () => { ui.placeholder.hidden = true; });
  const socket = connect(token);
  state.socket = socket;
  socket.on("connect", () => { join(); });
  socket.on("disconnect", () => {
    state.joined = false; // the server dropped our viewer with the connection
    closePeer();
    if (!state.fatal) setPill(ui.status, "warn", t("watch.serverReconnecting"));
  });
  socket.on("connect_error", (error) => {
    if (error.data && error.data.code) return fail(error.data);
    setPill(ui.status, "warn", t("watch.unreachable"));
  });
  socket.on("program", showProgram);
  socket.on("viewers", (counts) => { ui.viewers.textContent = viewersText(counts); });
  // the server ended this viewer by itself (ICE never completed, the connection was lost): watch again
  socket.on("media_ended", (payload) => {
    if (!payload || !payload.viewer_id || payload.viewer_id !== state.viewerId) return;
    state.viewerId = null;
    closePeer();
    scheduleRetry(payload.error);
  });
  socket.on("error", (payload) => {
    const error = payload && payload.error;
    if (isFatal(error)) fail(error); else showMessage(ui.message, "warn", describe(error));
  });
}

main();
