// The remote speaker's page: device choice and a camera preview, a
// network check (the return feed's connection: round trip, loss, rate)
// before going live, then publish over socket.io. The air state above the
// pictures: not sending -> green room (the operators see you, guests do
// not) -> standby (in preview) -> ON AIR. Beside the camera, the return
// feed: the forum's program over WebRTC, as guests see it (muted unless
// asked: the speaker's own voice would come back). The forum's schedule
// with a countdown to the speaker's slot, and the backstage channel to
// the operators. Plain messages for every refusal (expired invite, no camera...).
// When the page's node dies, the page opens itself on another node (common.js
// relocator) and, if the speaker was live, goes live again there by itself.
import {
  backoff, clockIn, connect, countdown, describe, gatherIce, isFatal, language, LOCAL_ZONE, localized, mountLanguageSwitch,
  onAirText, onLanguageChange, pageData, preferH264, readToken, receivePeer, relocator, request, setPill, setText,
  showMessage, t, viewersText, wireRefusals, zoneLabel,
} from "./common.js";
import { mountBackstage } from "./backstage.js";
import { tokenClaims } from "./invite.js";

const data = pageData();
const forumId = data.forum.id;
const $ = (id) => document.getElementById(id);
const ui = {
  status: $("status"), message: $("message"), preview: $("preview"), placeholder: $("preview-placeholder"),
  goLive: $("go-live"), stop: $("stop"), connection: $("connection"), program: $("program"),
  viewers: $("viewers"), onAir: $("on-air"), cameraSelect: $("camera-select"), micSelect: $("mic-select"),
  micLevel: $("mic-level"), airState: $("air-state"), returnVideo: $("return-video"),
  returnPlaceholder: $("return-placeholder"), returnSound: $("return-sound"), netState: $("net-state"),
  netDetail: $("net-detail"), countdown: $("countdown"), schedule: $("schedule"),
};
const SCHEDULE_REFRESH_MS = 30000;
const RESUME_LIVE = "#live"; // on the URL of a page relocated while live: it goes live again
const NET_CHECK_MS = 2000;
const NET_CONNECT_MS = 10000; // the return feed not connected by then: media is probably blocked

const state = {
  socket: null,
  stream: null,
  pc: null,
  sourceId: null,
  wantLive: false, // the speaker pressed Go live and not Stop
  joined: false,
  retry: 0,
  retryTimer: null,
  fatal: false,
  program: null, // the last program push (what is on air, what is in preview)
  level: 0, // microphone level 0..1, shown by the meter
  meter: null, // {context, stop}
  air: "offline", // "offline" | "green-room" | "preview" | "on-air"
  returnPc: null, returnRetry: 0, returnTimer: null, returnViewerId: null,
  network: { state: "checking", rtt_ms: null, loss_pct: null, kbps: null },
  schedule: { forum: null, offsetMs: 0, mine: [] },
  backstage: null,
};
window.forumcastSpeak = state; // for tests and support: read-only inspection

function fail(error) {
  state.fatal = true;
  state.wantLive = false;
  clearTimeout(state.retryTimer);
  closePeer();
  closeReturn();
  setPill(ui.status, "bad", t("watch.cannot"));
  showMessage(ui.message, "bad", describe(error));
  ui.goLive.disabled = true;
  ui.stop.disabled = true;
}

function showProgram(program) {
  state.program = program;
  ui.program.textContent = onAirText(program);
  const mine = program && state.sourceId && program.program === state.sourceId;
  ui.onAir.hidden = !mine;
  ui.onAir.className = mine ? "pill live" : "pill";
  const previewed = program && state.sourceId && program.preview === state.sourceId;
  if (mine) setPill(ui.status, "live", t("speak.youAreOnAir"));
  else if (state.sourceId && state.pc && state.pc.connectionState === "connected") {
    setPill(ui.status, "ok", t(previewed ? "speak.inPreview" : "speak.sending"));
  }
  showAir();
}

// The air state, from what the server last said (never stored on its own).
function showAir() {
  const program = state.program;
  const sending = !!(state.sourceId && state.pc && state.pc.connectionState === "connected");
  let air = "offline";
  if (sending && program && program.program === state.sourceId && !program.slate) air = "on-air";
  else if (sending && program && program.preview === state.sourceId) air = "preview";
  else if (sending) air = "green-room";
  state.air = air;
  ui.airState.dataset.state = air;
  ui.airState.textContent = t(`speak.air.${air}`);
}

// --- the return feed: the program over WebRTC, also the network check ----

function closeReturn() {
  clearTimeout(state.returnTimer);
  if (state.returnPc) {
    state.returnPc.onconnectionstatechange = null;
    state.returnPc.close();
    state.returnPc = null;
  }
}

async function watchReturn() {
  if (!state.joined || state.fatal) return;
  closeReturn();
  const pc = receivePeer(state.iceServers, (stream) => {
    if (ui.returnVideo.srcObject !== stream) ui.returnVideo.srcObject = stream;
    ui.returnVideo.play().catch(() => {});
  });
  state.returnPc = pc;
  state.network = { state: "checking", rtt_ms: null, loss_pct: null, kbps: null, last: null };
  showNetwork();
  pc.onconnectionstatechange = () => {
    if (pc !== state.returnPc) return;
    if (pc.connectionState === "failed") {
      state.network.state = "failed";
      showNetwork();
      state.returnTimer = setTimeout(watchReturn, backoff(state.returnRetry++));
    } else if (pc.connectionState === "connected") state.returnRetry = 0;
  };
  setTimeout(() => { // no media connection at all: say so before the speaker tries to go live
    if (pc === state.returnPc && pc.connectionState !== "connected") { state.network.state = "failed"; showNetwork(); }
  }, NET_CONNECT_MS);
  try {
    await pc.setLocalDescription(await pc.createOffer());
    await gatherIce(pc);
    const ack = await request(state.socket, "watch", { forum_id: forumId, sdp: pc.localDescription.sdp });
    if (pc !== state.returnPc) return;
    state.returnViewerId = ack.viewer_id;
    await pc.setRemoteDescription({ type: "answer", sdp: ack.sdp });
  } catch (error) {
    if (pc !== state.returnPc) return;
    if (isFatal(error)) return;
    state.returnTimer = setTimeout(watchReturn, backoff(state.returnRetry++));
  }
}

// Round trip (the selected ICE pair), loss and rate of the return feed:
// what this network does to media, measured before going live.
async function checkNetwork() {
  const pc = state.returnPc;
  if (pc && pc.connectionState === "connected") {
    const stats = await pc.getStats().catch(() => null);
    if (stats) {
      let rtt = null;
      let received = 0;
      let lost = 0;
      let bytes = 0;
      for (const s of stats.values()) {
        if (s.type === "candidate-pair" && s.nominated && s.state === "succeeded" && s.currentRoundTripTime != null) {
          rtt = s.currentRoundTripTime * 1000;
        }
        if (s.type === "inbound-rtp") {
          received += s.packetsReceived || 0;
          lost += Math.max(0, s.packetsLost || 0);
          bytes += s.bytesReceived || 0;
        }
      }
      const now = performance.now();
      const last = state.network.last;
      if (last) {
        const packets = (received - last.received) + (lost - last.lost);
        state.network.loss_pct = packets > 0 ? (100 * (lost - last.lost)) / packets : 0;
        state.network.kbps = Math.round(((bytes - last.bytes) * 8) / (now - last.at));
      }
      state.network.last = { received, lost, bytes, at: now };
      state.network.rtt_ms = rtt === null ? null : Math.round(rtt);
      const loss = state.network.loss_pct || 0;
      if (rtt === null && !last) state.network.state = "checking";
      else if ((rtt !== null && rtt > 300) || loss > 5) state.network.state = "poor";
      else if ((rtt !== null && rtt > 150) || loss > 1) state.network.state = "fair";
      else state.network.state = "good";
      showNetwork();
    }
  }
  setTimeout(checkNetwork, NET_CHECK_MS);
}

function showNetwork() {
  const n = state.network;
  const kind = { good: "ok", fair: "warn", poor: "bad", failed: "bad", checking: "warn" }[n.state];
  setPill(ui.netState, kind, t(`speak.net.${n.state}`));
  if (n.state === "failed") { ui.netDetail.textContent = t("speak.net.failedHint"); return; }
  const parts = [];
  if (n.rtt_ms !== null) parts.push(t("speak.net.rtt", { ms: n.rtt_ms }));
  if (n.loss_pct !== null) parts.push(t("speak.net.loss", { pct: n.loss_pct.toFixed(1) }));
  if (n.kbps !== null) parts.push(`${n.kbps} kb/s`);
  ui.netDetail.textContent = parts.join(" · ") || "—";
}

// --- the schedule: the forum's sessions, the speaker's own first in mind ----

async function refreshSchedule() {
  try {
    const response = await fetch(`/api/forums/${encodeURIComponent(forumId)}`, { cache: "no-store" });
    if (!response.ok) return;
    const forum = await response.json();
    state.schedule.forum = forum;
    if (forum.now) state.schedule.offsetMs = Date.parse(forum.now) - Date.now();
    // invites carry the speaker's name, not the event file's speaker id: match by name
    const me = String(tokenClaims().name || "").trim().toLowerCase();
    const ids = (forum.speakers || []).filter((s) => me && [s.name.en, s.name.zh]
      .some((n) => n && n.trim().toLowerCase() === me)).map((s) => s.id);
    state.schedule.mine = (forum.sessions || []).filter((x) => x.speakers.some((id) => ids.includes(id))).map((x) => x.id);
    renderSchedule();
  } catch (error) { /* informative: keep the last one */ }
}

function renderSchedule() {
  const forum = state.schedule.forum;
  if (!forum) return;
  const venue = data.timezone;
  const names = new Map((forum.speakers || []).map((s) => [s.id, localized(s.name)]));
  const now = Date.now() + state.schedule.offsetMs;
  ui.schedule.replaceChildren(...(forum.sessions || []).map((session) => {
    const li = document.createElement("li");
    li.dataset.session = session.id;
    const mine = state.schedule.mine.includes(session.id);
    const running = Date.parse(session.start) <= now && now < Date.parse(session.end);
    li.className = [mine ? "mine" : "", running ? "running" : ""].filter(Boolean).join(" ");
    const when = document.createElement("span");
    when.className = "when";
    const day = new Intl.DateTimeFormat(language() === "zh" ? "zh-CN" : "en-GB",
      { month: "short", day: "numeric", timeZone: LOCAL_ZONE }).format(new Date(session.start));
    const local = `${day} ${clockIn(session.start, LOCAL_ZONE)}–${clockIn(session.end, LOCAL_ZONE)} ${t("lobby.yourTime")}`;
    when.textContent = venue && venue !== LOCAL_ZONE
      ? `${local} · ${clockIn(session.start, venue)}–${clockIn(session.end, venue)} ${zoneLabel(venue)}` : local;
    const title = document.createElement("span");
    title.textContent = ` ${localized(session.title)}`;
    const who = document.createElement("span");
    who.className = "hint";
    who.textContent = ` — ${session.speakers.map((id) => names.get(id) || id).join(", ")}`;
    li.append(when, title, who);
    return li;
  }));
  tickCountdown();
}

function tickCountdown() {
  const forum = state.schedule.forum;
  if (!forum) return;
  const now = Date.now() + state.schedule.offsetMs;
  const sessions = (forum.sessions || []).filter((x) => Date.parse(x.end) > now);
  const mine = sessions.filter((x) => state.schedule.mine.includes(x.id));
  const target = mine[0] || sessions[0];
  let text;
  if (!target) text = t("speak.cd.over");
  else if (Date.parse(target.start) <= now) {
    text = t(mine.length ? "speak.cd.yoursNow" : "speak.cd.running", { title: localized(target.title), t: countdown(Date.parse(target.end) - now) });
  } else {
    text = t(mine.length ? "speak.cd.yours" : "speak.cd.next", { title: localized(target.title), t: countdown(Date.parse(target.start) - now) });
  }
  ui.countdown.textContent = text;
}

async function openCamera() {
  try {
    state.stream = await navigator.mediaDevices.getUserMedia({
      video: { width: { ideal: 1280 }, height: { ideal: 720 }, frameRate: { ideal: 30 } },
      audio: { echoCancellation: true, noiseSuppression: true },
    });
  } catch (error) {
    const name = error && error.name;
    const text = name === "NotAllowedError"
      ? t("speak.cameraDenied")
      : name === "NotFoundError"
        ? t("speak.cameraMissing")
        : t("speak.cameraFailed", { why: name || error });
    fail({ code: "camera", message: text });
    return false;
  }
  ui.preview.srcObject = state.stream;
  ui.placeholder.hidden = true;
  startMeter();
  await listDevices();
  return true;
}

// --- devices: pick a camera and microphone; swap them even while live ---

async function listDevices() {
  let devices = [];
  try {
    devices = await navigator.mediaDevices.enumerateDevices();
  } catch (error) {
    return; // the pickers stay empty; the default devices are in use
  }
  fillSelect(ui.cameraSelect, devices.filter((d) => d.kind === "videoinput"), currentDevice("video"), "Camera");
  fillSelect(ui.micSelect, devices.filter((d) => d.kind === "audioinput"), currentDevice("audio"), "Microphone");
}

function currentDevice(kind) {
  const track = state.stream && state.stream.getTracks().find((t) => t.kind === kind);
  return track ? track.getSettings().deviceId : null;
}

function fillSelect(select, devices, current, fallback) {
  select.replaceChildren(...devices.map((device, index) => {
    const option = document.createElement("option");
    option.value = device.deviceId;
    option.textContent = device.label || `${fallback} ${index + 1}`;
    option.selected = device.deviceId === current;
    return option;
  }));
  select.disabled = devices.length < 2;
}

async function switchDevice(kind, deviceId) {
  const constraints = kind === "video"
    ? { video: { deviceId: { exact: deviceId }, width: { ideal: 1280 }, height: { ideal: 720 } } }
    : { audio: { deviceId: { exact: deviceId }, echoCancellation: true, noiseSuppression: true } };
  let fresh;
  try {
    fresh = (await navigator.mediaDevices.getUserMedia(constraints)).getTracks()[0];
  } catch (error) {
    showMessage(ui.message, "warn", t(kind === "video" ? "speak.cameraSwitchFailed" : "speak.micSwitchFailed",
      { why: error.name }));
    return;
  }
  const old = state.stream.getTracks().find((t) => t.kind === kind);
  if (old) {
    state.stream.removeTrack(old);
    old.stop();
  }
  state.stream.addTrack(fresh);
  if (state.pc) {
    // live: swap the track on the existing connection, no renegotiation
    const transceiver = state.pc.getTransceivers().find((t) => t.receiver.track && t.receiver.track.kind === kind);
    if (transceiver) await transceiver.sender.replaceTrack(fresh);
  }
  if (kind === "audio") startMeter();
  showMessage(ui.message, "", "");
}

// --- microphone meter ---------------------------------------------------

function startMeter() {
  if (state.meter) state.meter.stop();
  const track = state.stream.getAudioTracks()[0];
  if (!track || !window.AudioContext) return;
  const context = new AudioContext();
  const analyser = context.createAnalyser();
  analyser.fftSize = 512;
  context.createMediaStreamSource(new MediaStream([track])).connect(analyser);
  const samples = new Float32Array(analyser.fftSize);
  let running = true;
  const tick = () => {
    if (!running) return;
    analyser.getFloatTimeDomainData(samples);
    let sum = 0;
    for (const x of samples) sum += x * x;
    const rms = Math.sqrt(sum / samples.length);
    state.level = Math.min(1, rms * 4); // speech peaks near 0.25 rms: fill the bar
    ui.micLevel.style.width = `${Math.round(state.level * 100)}%`;
    setTimeout(tick, 100); // not requestAnimationFrame: keeps measuring in a background tab
  };
  tick();
  // browsers start an AudioContext suspended until the first click
  if (context.state === "suspended") document.addEventListener("click", () => context.resume(), { once: true });
  state.meter = { context, stop: () => { running = false; context.close(); } };
}

function closePeer() {
  if (state.pc) {
    state.pc.onconnectionstatechange = null;
    state.pc.close();
    state.pc = null;
  }
}

async function publish() {
  if (!state.wantLive || !state.joined || state.fatal) return;
  clearTimeout(state.retryTimer);
  closePeer();
  if (state.sourceId) {
    const old = state.sourceId;
    state.sourceId = null;
    request(state.socket, "unpublish", { source_id: old }).catch(() => {}); // it may be gone already
  }
  const pc = new RTCPeerConnection({ iceServers: state.iceServers || [] }); // from the join ack
  state.pc = pc;
  for (const track of state.stream.getTracks()) {
    const transceiver = pc.addTransceiver(track, { direction: "sendonly", streams: [state.stream] });
    if (track.kind === "video") preferH264(transceiver, "sender");
  }
  pc.onconnectionstatechange = () => onPeerState(pc);
  setPill(ui.status, "warn", t("speak.connectingCamera"));
  try {
    await pc.setLocalDescription(await pc.createOffer());
    await gatherIce(pc);
    const ack = await request(state.socket, "publish", { forum_id: forumId, sdp: pc.localDescription.sdp });
    if (pc !== state.pc) return; // replaced meanwhile
    state.sourceId = ack.source_id;
    await pc.setRemoteDescription({ type: "answer", sdp: ack.sdp });
    showMessage(ui.message, "", "");
  } catch (error) {
    if (pc !== state.pc) return;
    if (isFatal(error)) return fail(error);
    scheduleRetry(error);
  }
}

function onPeerState(pc) {
  if (pc !== state.pc) return;
  setText(ui.connection, pc.connectionState);
  showAir();
  if (pc.connectionState === "connected") {
    state.retry = 0;
    setPill(ui.status, "ok", t("speak.sending"));
  } else if (pc.connectionState === "failed") {
    scheduleRetry({ code: "ice", message: "the media connection failed" });
  }
}

function scheduleRetry(error) {
  if (!state.wantLive || state.fatal) return;
  const delay = backoff(state.retry++);
  setPill(ui.status, "warn", t("watch.reconnecting"));
  showMessage(ui.message, "warn", `${describe(error)} ${t("watch.retryIn", { s: Math.round(delay / 1000) })}`);
  clearTimeout(state.retryTimer);
  state.retryTimer = setTimeout(publish, delay);
}

function stopSending() {
  state.wantLive = false;
  clearTimeout(state.retryTimer);
  closePeer();
  if (state.sourceId) {
    request(state.socket, "unpublish", { source_id: state.sourceId }).catch(() => {});
    state.sourceId = null;
  }
  ui.goLive.disabled = !state.joined;
  ui.stop.disabled = true;
  setText(ui.connection, t("speak.notSending"));
  ui.onAir.hidden = true;
  setPill(ui.status, "ok", t("speak.readyNotSending"));
  showAir();
}

async function join() {
  try {
    const ack = await request(state.socket, "join", { forum_id: forumId });
    state.iceServers = ack.ice_servers || []; // STUN/TURN, fresh TURN credentials on every join
    state.joined = true;
    ui.viewers.textContent = viewersText(ack.viewers);
    showProgram(ack.program);
    ui.goLive.disabled = state.wantLive;
    if (state.wantLive) publish(); // back after a reconnect: the server ended the old publish
    else setPill(ui.status, "ok", t("speak.ready"));
    state.cluster.learn();
    watchReturn();
    state.backstage.load();
  } catch (error) {
    if (isFatal(error)) return fail(error);
    showMessage(ui.message, "warn", describe(error));
  }
}

async function main() {
  mountLanguageSwitch();
  const token = readToken();
  if (!token) return fail({ code: "token_missing" });
  if (!(await openCamera())) return;
  refreshSchedule();
  setInterval(refreshSchedule, SCHEDULE_REFRESH_MS);
  setInterval(tickCountdown, 1000);
  onLanguageChange(() => { renderSchedule(); showAir(); showNetwork(); });
  const socket = connect(token);
  state.socket = socket;
  state.cluster = relocator(forumId, socket, {
    isFatal: () => state.fatal, resumeHash: () => (state.wantLive ? RESUME_LIVE : ""),
  });
  if (location.hash === RESUME_LIVE) { // relocated while live: live again once joined
    history.replaceState(null, "", location.pathname + location.search);
    state.wantLive = true;
    ui.goLive.disabled = true;
    ui.stop.disabled = false;
  }
  state.backstage = mountBackstage(socket, forumId, $("backstage"), { canSend: () => state.joined });
  ui.returnSound.addEventListener("click", () => {
    ui.returnVideo.muted = !ui.returnVideo.muted;
    ui.returnVideo.play().catch(() => {});
    ui.returnSound.textContent = t(ui.returnVideo.muted ? "speak.returnHear" : "speak.returnMute");
  });
  ui.returnVideo.addEventListener("playing", () => { ui.returnPlaceholder.hidden = true; });
  checkNetwork();
  socket.on("connect", () => { state.cluster.connected(); showMessage(ui.message, "", ""); join(); });
  socket.on("disconnect", (reason) => {
    state.joined = false;
    state.cluster.disconnected(reason); // not back soon: the node may be dead
    state.sourceId = null; // the server unpublishes a connection's sources when it goes
    closePeer();
    closeReturn();
    showAir();
    if (!state.fatal) setPill(ui.status, "warn", t("watch.serverReconnecting"));
  });
  socket.on("program", showProgram);
  // a preview push carries no on-air source record: keep the last program's, take the new preview
  socket.on("preview", (payload) => { showProgram({ ...state.program, preview: payload && payload.preview }); });
  socket.on("viewers", (counts) => { ui.viewers.textContent = viewersText(counts); });
  // the server ended this publish by itself (ICE never completed, the connection was lost): publish again
  socket.on("media_ended", (payload) => {
    if (payload && payload.viewer_id && payload.viewer_id === state.returnViewerId) { // the return feed ended
      state.returnViewerId = null;
      closeReturn();
      state.returnTimer = setTimeout(watchReturn, backoff(state.returnRetry++));
      return;
    }
    if (!payload || !payload.source_id || payload.source_id !== state.sourceId) return;
    state.sourceId = null;
    if (state.wantLive) scheduleRetry(payload.error);
  });
  wireRefusals(socket, { fail, status: ui.status, message: ui.message });
  ui.goLive.addEventListener("click", () => {
    state.wantLive = true;
    state.retry = 0;
    ui.goLive.disabled = true;
    ui.stop.disabled = false;
    publish();
  });
  ui.stop.addEventListener("click", stopSending);
  ui.cameraSelect.addEventListener("change", () => switchDevice("video", ui.cameraSelect.value));
  ui.micSelect.addEventListener("change", () => switchDevice("audio", ui.micSelect.value));
}

main();
