// The remote speaker's page: camera preview, then publish over socket.io.
// States shown to the speaker: connecting -> ready -> sending -> on air,
// and plain messages for every refusal (expired invite, no camera, ...).
import {
  backoff, connect, describe, gatherIce, isFatal, mountLanguageSwitch, onAirText, pageData, preferH264,
  readToken, request, setPill, showMessage, t, viewersText, wireRefusals,
} from "./common.js";

const data = pageData();
const forumId = data.forum.id;
const $ = (id) => document.getElementById(id);
const ui = {
  status: $("status"), message: $("message"), preview: $("preview"), placeholder: $("preview-placeholder"),
  goLive: $("go-live"), stop: $("stop"), connection: $("connection"), program: $("program"),
  viewers: $("viewers"), onAir: $("on-air"), cameraSelect: $("camera-select"), micSelect: $("mic-select"),
  micLevel: $("mic-level"),
};

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
};
window.forumcastSpeak = state; // for tests and support: read-only inspection

function fail(error) {
  state.fatal = true;
  state.wantLive = false;
  clearTimeout(state.retryTimer);
  closePeer();
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
    showMessage(ui.message, "warn", `That ${kind === "video" ? "camera" : "microphone"} could not be opened (${error.name}).`);
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
  ui.connection.textContent = pc.connectionState;
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
  ui.connection.textContent = t("speak.notSending");
  ui.onAir.hidden = true;
  setPill(ui.status, "ok", t("speak.readyNotSending"));
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
  const socket = connect(token);
  state.socket = socket;
  socket.on("connect", () => { showMessage(ui.message, "", ""); join(); });
  socket.on("disconnect", () => {
    state.joined = false;
    state.sourceId = null; // the server unpublishes a connection's sources when it goes
    closePeer();
    if (!state.fatal) setPill(ui.status, "warn", t("watch.serverReconnecting"));
  });
  socket.on("program", showProgram);
  // a preview push carries no on-air source record: keep the last program's, take the new preview
  socket.on("preview", (payload) => { showProgram({ ...state.program, preview: payload && payload.preview }); });
  socket.on("viewers", (counts) => { ui.viewers.textContent = viewersText(counts); });
  // the server ended this publish by itself (ICE never completed, the connection was lost): publish again
  socket.on("media_ended", (payload) => {
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
