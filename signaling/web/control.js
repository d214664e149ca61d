// The operator's vision mixer for one forum: a live tile per source, a
// preview and a program monitor, TAKE and CUT TO SLATE, the agenda, the
// venue ingest addresses, the media library and its playouts, the viewer
// count, the Q&A queue and chat moderation, the backstage channel to the
// forum's speakers, restreams and recording. EN/ZH like every page (i18n.js).
// Every action goes over socket.io (acked; the server pushes the result to
// every operator of the forum); uploads go over tus (resumable, tus-js-client)
// with the same token, and their conversion jobs are pushed as "media_job".
import {
  backoff, clockIn, connect, describe, gatherIce, isFatal, LOCAL_ZONE, localized, mountLanguageSwitch,
  onLanguageChange, pageData, readToken, receivePeer, request, setPill, showMessage, stateWord, t, viewersText,
  zoneLabel,
} from "/static/js/common.js";
import { mountBackstage } from "/static/js/backstage.js";
import { mountQaPanel } from "/static/js/qa_panel.js";

const data = pageData();
const forumId = data.forum.id;
const token = readToken();
const $ = (id) => document.getElementById(id);

const state = {
  socket: null, joined: false, fatal: false, retry: 0,
  program: { program: null, preview: null, slate: true, manual: false, version: -1 },
  sources: [],
  tiles: new Map(), // source id -> { el, video, pc, stream, state }
  programPc: null,
  takes: 0, slates: 0,
  agenda: null, lastRecording: null,
};
window.forumcastControl = state; // for tests and support: read-only inspection

// --- small helpers -------------------------------------------------------------

function flash(kind, text) { showMessage($("message"), kind, text); }


async function act(event, payload) {
  try {
    const ack = await request(state.socket, event, { forum_id: forumId, ...payload });
    flash("", "");
    if (ack && ack.program) applyProgram(ack.program);
    return ack;
  } catch (error) {
    flash("bad", `${event}: ${describe(error)}`);
    return null;
  }
}

function sourceName(id) {
  const source = state.sources.find((s) => s.id === id);
  return source ? source.name : id;
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value; else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child);
  return node;
}

// --- WebRTC: a recvonly peer per watched source, one for the program ------------

async function watchInto(sourceId, onStream) {
  const pc = receivePeer(state.iceServers, onStream);
  await pc.setLocalDescription(await pc.createOffer());
  await gatherIce(pc);
  const payload = { forum_id: forumId, sdp: pc.localDescription.sdp };
  if (sourceId) payload.source_id = sourceId;
  try {
    const ack = await request(state.socket, "watch", payload);
    await pc.setRemoteDescription({ type: "answer", sdp: ack.sdp });
    pc.viewerId = ack.viewer_id;
  } catch (error) {
    pc.close();
    throw error;
  }
  return pc;
}

function play(video, stream) {
  if (video.srcObject !== stream) video.srcObject = stream;
  video.play().catch(() => {});
}

async function watchProgram() {
  if (state.programPc) state.programPc.close();
  state.programPc = null;
  try {
    state.programPc = await watchInto(null, (stream) => play($("program-video"), stream));
  } catch (error) {
    flash("warn", `${t("ctl.programMonitor")}: ${describe(error)}`);
  }
}

// --- the program state ---------------------------------------------------------

function applyProgram(program) {
  if (!program || program.version < state.program.version) return; // a stale push
  state.program = { ...state.program, ...program };
  $("version").textContent = program.version;
  $("manual").checked = !!program.manual;
  $("program-name").textContent = program.program ? sourceName(program.program) : t("ctl.slateName");
  $("preview-name").textContent = program.preview ? sourceName(program.preview) : "—";
  const previewed = state.sources.find((s) => s.id === program.preview);
  const live = !!previewed && previewed.state === "live";
  // only a live source can go on air: the server refuses the rest (409 conflict)
  $("take").disabled = !program.preview || program.preview === program.program || !live;
  $("take").title = program.preview && previewed && !live
    ? t("ctl.notLive", { name: previewed.name, state: previewed.state })
    : t("ctl.takeTitle");
  const tile = program.preview && state.tiles.get(program.preview);
  if (tile && tile.stream) play($("preview-video"), tile.stream);
  else $("preview-video").srcObject = null;
  renderTileMarks();
}

function renderTileMarks() {
  let n = 0;
  for (const source of state.sources) {
    const tile = state.tiles.get(source.id);
    if (!tile) continue;
    n += 1;
    const onAir = source.id === state.program.program && !state.program.slate;
    tile.el.classList.toggle("on-air", onAir);
    tile.el.classList.toggle("in-preview", source.id === state.program.preview);
    tile.el.querySelector(".key").textContent = n <= 9 ? String(n) : "";
    const badge = tile.el.querySelector(".badge");
    badge.textContent = onAir ? t("ctl.onAir") : stateWord("ctl.state", source.state);
    badge.className = `badge ${onAir ? "air" : source.state}`;
  }
}

// --- sources and their tiles ------------------------------------------------------

function applySources(sources) {
  state.sources = sources;
  const ids = new Set(sources.map((s) => s.id));
  for (const [id, tile] of state.tiles) {
    if (!ids.has(id)) {
      if (tile.pc) tile.pc.close();
      tile.el.remove();
      state.tiles.delete(id);
    }
  }
  for (const source of sources) {
    let tile = state.tiles.get(source.id);
    if (!tile) tile = addTile(source);
    tile.el.querySelector(".name").textContent = `${source.name} (${source.kind})`;
    showMediaBadge(tile.el.querySelector(".media"), source.media);
    if (source.state === "live" && !tile.pc && !tile.watching) startTileWatch(source.id, tile);
  }
  $("no-sources").hidden = sources.length > 0;
  applyProgram({ ...state.program, version: state.program.version });
}

// How the server handles the source's video: copied as sent, transcoded once
// at ingest (and why), or flagged (viewers may not play it). The reason is
// the badge's tooltip and its aria label.
function showMediaBadge(badge, media) {
  if (!media) { badge.hidden = true; return; }
  const words = { copy: "COPY", transcode: "TRANSCODED", flagged: "CHECK ENCODER" };
  const sent = [media.profile, media.width && `${media.width}x${media.height}`,
    media.frame_rate && `${Math.round(media.frame_rate)} fps`].filter(Boolean).join(", ");
  badge.hidden = false;
  badge.textContent = words[media.handling] || media.handling.toUpperCase();
  badge.className = `media ${media.handling}`;
  const why = media.reason ? `: ${media.reason}` : "";
  badge.title = `${media.handling}${why}${sent ? ` (source: ${sent})` : ""}`
    + `${media.audio === false ? "; no audio, viewers hear silence" : ""}`;
  badge.setAttribute("aria-label", badge.title);
}

function addTile(source) {
  const video = el("video", { autoplay: "", playsinline: "" });
  video.muted = true;
  const node = el("div", { class: "tile", "data-source": source.id }, video,
    el("div", { class: "meta" }, el("span", { class: "key" }), el("span", { class: "name" }),
      el("span", { class: "badge" }), el("span", { class: "media", hidden: "" })));
  node.addEventListener("click", () => act("preview", { source_id: source.id }));
  node.addEventListener("dblclick", () => take(source.id));
  $("tiles").append(node);
  const tile = { el: node, video, pc: null, stream: null, watching: false };
  state.tiles.set(source.id, tile);
  return tile;
}

async function startTileWatch(sourceId, tile) {
  tile.watching = true;
  try {
    tile.pc = await watchInto(sourceId, (stream) => {
      tile.stream = stream;
      play(tile.video, stream);
      if (state.program.preview === sourceId) play($("preview-video"), stream);
    });
  } catch (error) {
    flash("warn", `${t("ctl.tile")} ${sourceName(sourceId)}: ${describe(error)}`);
  } finally {
    tile.watching = false;
  }
}

async function take(sourceId) {
  state.takes += 1;
  await act("take", sourceId ? { source_id: sourceId } : {});
}

// --- media library, playouts, ingest ------------------------------------------------

function trackLabel(track) {
  const words = [track.language || "und", track.title, track.default ? "default" : ""].filter(Boolean);
  return `${track.index + 1}: ${words.join(" · ")}`;
}

function applyMedia(payload) {
  const list = $("media");
  list.replaceChildren();
  for (const item of payload.media || []) {
    const playButton = el("button", {}, t("ctl.play"));
    playButton.addEventListener("click", () => act("playout_start", { media: item.id, take: false }));
    const takeButton = el("button", {}, t("ctl.playTake"));
    takeButton.addEventListener("click", () => act("playout_start", { media: item.id, take: true }));
    const how = item.processing && item.processing.video ? `, video ${item.processing.video}` : "";
    const row = el("li", { "data-media": item.id }, el("span", { class: "name" },
      `${item.name} — ${Math.round(item.duration)} s, ${item.width}×${item.height}${how}`));
    const tracks = item.audio_tracks || [];
    if (tracks.length > 1) { // the operator picks which language goes on air
      const select = el("select", { "aria-label": "audio track", class: "audio-track" });
      for (const track of tracks) {
        const option = el("option", { value: String(track.index) }, trackLabel(track));
        if (track.index === item.audio_track) option.selected = true;
        select.append(option);
      }
      select.addEventListener("change", () => chooseTrack(item.id, Number(select.value)));
      row.append(select);
    }
    row.append(playButton, takeButton);
    for (const note of item.notes || []) row.append(el("span", { class: "hint" }, note));
    list.append(row);
  }
  applyJobs(payload.jobs || []);
}

async function chooseTrack(mediaId, index) {
  try {
    await api(`/media/${encodeURIComponent(mediaId)}/audio`, {
      method: "POST", body: JSON.stringify({ audio_track: index }), headers: { "Content-Type": "application/json" },
    });
  } catch (error) {
    flash("bad", `${t("ctl.audioTrack")}: ${describe(error)}`);
  }
}

// conversion jobs: the server pushes "media_job" at each state and percent
const jobs = new Map();

function jobText(job) {
  if (job.state === "failed") return `${job.name}: refused — ${job.error}`;
  if (job.state === "done") return `${job.name}: ready`;
  const eta = job.eta_s != null ? `, ${Math.round(job.eta_s)} s left` : "";
  return `${job.name}: ${job.state} ${job.percent}%${eta}`;
}

function applyJobs(list) {
  for (const job of list) jobs.set(job.id, job);
  const ul = $("jobs");
  ul.replaceChildren();
  for (const job of [...jobs.values()].filter((j) => j.state !== "done")) {
    ul.append(el("li", { "data-job": job.id, "data-state": job.state }, jobText(job)));
  }
}

function applyPlayouts(payload) {
  const list = $("playouts");
  list.replaceChildren();
  for (const playout of payload.playouts || []) {
    const stop = el("button", {}, t("ctl.stop"));
    stop.addEventListener("click", () => act("playout_stop", { source_id: playout.source_id }));
    list.append(el("li", {}, el("span", { class: "name" }, `${playout.name} (${playout.state})`), stop));
  }
}

async function api(path, options = {}) {
  const response = await fetch(`/api/forums/${encodeURIComponent(forumId)}${path}`, {
    ...options, headers: { Authorization: `Bearer ${token}`, ...(options.headers || {}) },
  });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw (body.error || { code: "error", message: `HTTP ${response.status}` });
  return body;
}

async function refreshLists() {
  try {
    applyMedia(await api("/media"));
    applyPlayouts(await api("/playouts"));
  } catch (error) {
    flash("warn", describe(error));
  }
}

// Uploads are resumable (tus): a broken connection resumes where it stopped.
function upload(event) {
  event.preventDefault();
  const file = $("upload-file").files[0];
  if (!file) return;
  const status = $("upload-status");
  const sending = new window.tus.Upload(file, {
    endpoint: `/api/forums/${encodeURIComponent(forumId)}/uploads`,
    headers: { Authorization: `Bearer ${token}` },
    metadata: { filename: file.name },
    chunkSize: 16 * 1024 * 1024,
    retryDelays: [0, 1000, 3000, 5000, 10000],
    removeFingerprintOnSuccess: true,
    onProgress: (sent, total) => { status.textContent = t("ctl.uploading", { pct: Math.floor((sent / total) * 100) }); },
    onError: (error) => {
      status.textContent = "";
      const body = error.originalResponse ? error.originalResponse.getBody() : "";
      let message = String(error.message || error);
      try { message = JSON.parse(body).error.message; } catch (_) { /* not our JSON */ }
      flash("bad", `${t("ctl.upload")}: ${message}`);
    },
    onSuccess: () => { status.textContent = t("ctl.uploaded", { name: file.name }); },
  });
  sending.findPreviousUploads().then((previous) => {
    if (previous.length) sending.resumeFromPreviousUpload(previous[0]);
    sending.start();
  });
}

// The stream key is a secret: the addresses that hold it are fetched and
// shown only when the operator asks (the server hides them otherwise).
async function openIngest() {
  try {
    const ingest = await api("/ingest"); // opens the forum's venue listeners; no key in the answer
    $("ingest-state").textContent = stateWord("ctl.state", ingest.state);
  } catch (error) {
    flash("bad", `${t("ctl.venue")}: ${describe(error)}`);
  }
}

async function toggleIngest() {
  if (!$("ingest").hidden) {
    $("ingest").hidden = true;
    $("ingest-rtmp").textContent = "";
    $("ingest-srt").textContent = "";
    $("ingest-show").textContent = t("ctl.ingestShow");
    return;
  }
  try {
    const ingest = await api("/ingest?reveal=true");
    $("ingest-rtmp").textContent = ingest.rtmp_url ?? t("ctl.notListening");
    $("ingest-srt").textContent = ingest.srt_url ?? t("ctl.notListening");
    $("ingest-state").textContent = stateWord("ctl.state", ingest.state);
    $("ingest").hidden = false;
    $("ingest-show").textContent = t("ctl.ingestHide");
  } catch (error) {
    flash("bad", `${t("ctl.venue")}: ${describe(error)}`);
  }
}

// Agenda times in the venue's zone, labelled with it; the operator's own beside them when it differs.
function sessionText(session) {
  if (!session) return "—";
  const venue = data.timezone;
  const span = (zone) => `${clockIn(session.start, zone)}–${clockIn(session.end, zone)}`;
  let when = `${span(venue)} ${zoneLabel(venue)}`;
  if (LOCAL_ZONE !== venue) when += ` · ${span(LOCAL_ZONE)} ${t("lobby.yourTime")}`;
  return `${localized(session.title)} (${when})`;
}

function showAgenda() {
  $("agenda-live").textContent = sessionText(state.agenda && state.agenda.live);
  $("agenda-next").textContent = sessionText(state.agenda && state.agenda.next);
}

async function refreshAgenda() {
  try {
    const response = await fetch(`/api/forums/${encodeURIComponent(forumId)}`);
    state.agenda = await response.json();
    showAgenda();
  } catch (error) { /* the agenda is informative: keep the last one */ }
}

// --- socket and page -----------------------------------------------------------------

async function join() {
  try {
    const ack = await request(state.socket, "join", { forum_id: forumId });
    state.iceServers = ack.ice_servers || []; // STUN/TURN, fresh TURN credentials on every join
    const role = ack.participant && ack.participant.role;
    if (role !== "operator" && role !== "admin") {
      return fail({ code: "forbidden", message: "the control page needs an operator's invite" });
    }
    state.joined = true;
    state.retry = 0;
    setPill($("status"), "ok", t("ctl.connected"));
    $("viewers").textContent = viewersText(ack.viewers);
    state.program.version = -1; // a fresh snapshot wins
    applySources(ack.sources);
    applyProgram(ack.program);
    watchProgram();
    refreshLists();
    openIngest(); // opening the control page opens the forum's venue listeners too
    state.qa.load();
    state.backstage.load();
  } catch (error) {
    if (isFatal(error)) return fail(error);
    setTimeout(join, backoff(state.retry++));
  }
}

function fail(error) {
  state.fatal = true;
  setPill($("status"), "bad", t("watch.cannot"));
  flash("bad", describe(error));
}

function keys(event) {
  if (event.target.closest("input, textarea, select")) return;
  if (event.ctrlKey || event.metaKey || event.altKey) return; // the browser's own shortcuts
  if (event.key === "Enter" && !$("take").disabled) { event.preventDefault(); take(null); }
  if (event.key === "s" || event.key === "S") { event.preventDefault(); state.slates += 1; act("cut_to_slate", {}); }
  const n = Number(event.key);
  if (n >= 1 && n <= 9 && state.sources[n - 1]) act("preview", { source_id: state.sources[n - 1].id });
}

// --- outputs: restreams and recording -----------------------------------------------

function applyRestreams(payload) {
  const list = $("restreams");
  list.replaceChildren();
  for (const r of payload.restreams || []) {
    const running = ["connecting", "live", "retrying"].includes(r.state);
    const toggle = el("button", {}, t(running ? "ctl.stop" : "ctl.start"));
    toggle.addEventListener("click", () => restreamCall(`/restreams/${r.id}/${running ? "stop" : "start"}`, "POST"));
    const remove = el("button", {}, t("ctl.remove"));
    remove.addEventListener("click", () => restreamCall(`/restreams/${r.id}`, "DELETE"));
    let detail = stateWord("ctl.rs", r.state);
    if (r.state === "live") detail += ` ${r.bitrate_kbps} kb/s, ${r.uptime_s} s`;
    if (r.state === "retrying") detail += ` (${t("ctl.attempt", { n: r.attempt })}: ${r.last_error})`;
    list.append(el("li", { "data-restream": r.id, "data-state": r.state },
      el("span", { class: "name" }, `${r.name}: ${detail}`), toggle, remove));
  }
}

async function restreamCall(path, method, body) {
  try {
    const options = { method };
    if (body) { options.body = JSON.stringify(body); options.headers = { "Content-Type": "application/json" }; }
    if (method !== "GET") await api(path, options);
    applyRestreams(await api("/restreams"));
  } catch (error) {
    flash("warn", describe(error));
  }
}

async function addRestream(event) {
  event.preventDefault();
  const body = { name: $("restream-name").value, url: $("restream-url").value, stream_key: $("restream-key").value };
  $("restream-key").value = "";  // the page keeps no key
  await restreamCall("/restreams", "POST", body);
}

function applyRecordingIdle() {
  $("recording-state").textContent = t("ctl.rec.idle");
  $("recording-toggle").textContent = t("ctl.recStart");
}

function applyRecording(recording) {
  if (recording.forum_id !== forumId) return;
  state.recording = recording.state === "recording" ? recording : null;
  state.lastRecording = recording;
  let text = stateWord("ctl.rec", recording.state);
  if (recording.alert) text += ` — ${recording.alert}`;
  $("recording-state").textContent = text;
  $("recording-toggle").textContent = t(state.recording ? "ctl.recStop" : "ctl.recStart");
}

async function refreshRecording() {
  const response = await fetch("/api/recordings", { headers: { Authorization: `Bearer ${token}` } });
  if (!response.ok) return;
  const mine = ((await response.json()).recordings || []).filter((r) => r.forum_id === forumId);
  if (mine.length) applyRecording(mine[mine.length - 1]);
}

async function toggleRecording() {
  const ack = await act(state.recording ? "recording_stop" : "recording_start", {});
  if (ack && ack.recording) applyRecording(ack.recording);
}

function main() {
  if (!token) return fail({ code: "token_missing" });
  $("restream-add").addEventListener("submit", addRestream);
  $("recording-toggle").addEventListener("click", toggleRecording);
  $("take").addEventListener("click", () => take(null));
  $("slate").addEventListener("click", () => act("cut_to_slate", {}));
  $("manual").addEventListener("change", (e) => act("set_manual", { manual: e.target.checked }));
  $("upload").addEventListener("submit", upload);
  $("ingest-show").addEventListener("click", toggleIngest);
  document.addEventListener("keydown", keys);
  const socket = connect(token);
  state.socket = socket;
  state.qa = mountQaPanel(socket, forumId, $("qa-panel"), flash); // Q&A queue and chat moderation
  state.backstage = mountBackstage(socket, forumId, $("backstage"), { canSend: () => state.joined });
  mountLanguageSwitch(); // the EN/ZH choice every page shares (the panels marked data-i18n follow it)
  applyRecordingIdle();
  onLanguageChange(() => {
    showAgenda();
    if (state.sources) applySources(state.sources); // tiles' badges, then the program
    if (state.joined) refreshLists(); // media list and playouts (their buttons)
    applyProgram({ ...state.program });
    if (state.lastRecording) applyRecording(state.lastRecording); else applyRecordingIdle();
    restreamCall("/restreams", "GET");
  });
  socket.on("connect", join);
  socket.on("disconnect", () => {
    state.joined = false;
    for (const tile of state.tiles.values()) { if (tile.pc) tile.pc.close(); tile.pc = null; }
    if (!state.fatal) setPill($("status"), "warn", t("watch.reconnecting"));
  });
  socket.on("connect_error", (error) => {
    if (error.data && error.data.code) return fail(error.data);
    setPill($("status"), "warn", t("watch.unreachable"));
  });
  socket.on("program", applyProgram);
  socket.on("preview", applyProgram);
  socket.on("sources", (payload) => applySources(payload.sources));
  socket.on("playouts", applyPlayouts);
  socket.on("media", applyMedia);
  socket.on("media_job", (job) => applyJobs([job]));
  socket.on("restreams", applyRestreams);
  socket.on("viewers", (counts) => { if (counts.forum_id === forumId) $("viewers").textContent = viewersText(counts); });
  socket.on("recording", applyRecording);
  restreamCall("/restreams", "GET");
  refreshRecording();
  refreshAgenda();
  setInterval(refreshAgenda, 30000);
}

main();
